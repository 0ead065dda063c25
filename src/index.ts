/**
 * Portway: an edge-ingress tunnel. Two ways in:
 * - the seed-compatible classes `RemoteIngressHub` / `RemoteIngressEdge` (Promises + EventEmitter), and
 * - the Effect services `Hub` / `Edge` (scoped resources, layers, event streams) the classes wrap.
 */
export {
  RemoteIngressHub,
  toHubApiEvent,
  type ConnectedEdgeStatus,
  type EdgeAuthFailedEvent,
  type EdgeConnectedEvent,
  type EdgeDisconnectedEvent,
  type HubStreamClosedEvent,
  type HubStreamOpenedEvent,
  type RemoteIngressHubEvents,
  type RemoteIngressHubOptions,
  type RemoteIngressHubStatus,
} from "./api/hub.js";
export {
  RemoteIngressEdge,
  toEdgeApiEvent,
  type EdgeStreamClosedEvent,
  type EdgeStreamOpenedEvent,
  type ListenerErrorEvent,
  type PortsAssignedEvent,
  type PortsUpdatedEvent,
  type PublicIpDiscoveredEvent,
  type RemoteIngressEdgeEvents,
  type RemoteIngressEdgeOptions,
  type RemoteIngressEdgeStatus,
  type TunnelConnectedEvent,
  type TunnelDisconnectedEvent,
  type TunnelRejectedEvent,
} from "./api/edge.js";
export {
  decodeConnectionToken,
  decodeToken,
  encodeConnectionToken,
  encodeToken,
  normalizeFingerprint,
  type ConnectionToken,
  type ConnectionTokenInput,
  type HubAddress,
} from "./token.js";
export { Hub, type HubEvent, type HubService } from "./hub/service.js";
export { defaultHubDataDir, fingerprintOfPem, hubCertPaths } from "./hub/identity.js";
export { Edge, type EdgeEvent, type EdgeService } from "./edge/service.js";
export {
  loadHubConfig,
  resolveAllowedEdges,
  resolveHubOptions,
  type AllowedEdge,
  type AllowedEdgeInput,
  type ConfigInputs,
  type HubConfig,
  type HubOptions,
} from "./config/hub.js";
export { loadEdgeConfig, resolveEdgeOptions, type EdgeConfig, type EdgeOptions } from "./config/edge.js";
export {
  AddonLoadError,
  AlreadyRunningError,
  ConfigError,
  EdgeConnectTimeoutError,
  EdgeStartError,
  HubStartError,
  NativeCallError,
  NotRunningError,
  TokenError,
  type NativeErrorCode,
} from "./errors.js";
export { addonPath, loadAddon, type EventStreamProblem, type NativeAddon } from "./native/addon.js";
export type {
  AuthFailedReason,
  EdgeDisconnectReason,
  NativeEdgeEvent,
  NativeEdgeEventOf,
  NativeHubEvent,
  NativeHubEventOf,
  StreamCloseReason,
} from "./native/events.js";
export type { NativeEdgeStatus, NativeHubStatus, NativeListenerError } from "./native/status.js";

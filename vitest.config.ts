import { defineConfig } from "vitest/config";

// Test tiers are marked in file names: *.unit.test.ts (pure logic, mocks allowed),
// *.int.test.ts (real sockets, real addon, real nats-server / Debian peers).
export default defineConfig({
  test: {
    projects: [
      { test: { name: "unit", include: ["test/**/*.unit.test.ts"], testTimeout: 20_000, sequence: { groupOrder: 0 } } },
      {
        test: {
          name: "int",
          // Unit tests run first, as their own group (projects with different worker counts need distinct groups).
          sequence: { groupOrder: 1 },
          include: ["test/**/*.int.test.ts"],
          testTimeout: 120_000,
          hookTimeout: 120_000,
          // Integration files start servers on free ports; two at a time suits a 2-core machine.
          pool: "forks",
          maxWorkers: 2,
          fileParallelism: true,
        },
      },
    ],
  },
});

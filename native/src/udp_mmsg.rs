//! Batched UDP system calls on Linux: `recvmmsg` for up to `BATCH` datagrams (the per-datagram
//! `recvfrom` was the largest share of the edge's CPU at high packet rates) and `sendmmsg` with UDP
//! GSO for a connected socket.

use crate::udp::RECV_BUF;
use socket2::SockAddr;
use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per `recvmmsg`. Each slot holds the largest datagram, so none is truncated; the
/// buffer is per worker thread and only the pages datagrams are written to become resident.
pub const BATCH: usize = 32;

thread_local! {
    pub static SLOTS: RefCell<Slots> = RefCell::new(Slots::new());
}

pub struct Slots {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Slots {
    fn new() -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage (plain C struct).
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            data: vec![0u8; BATCH * RECV_BUF],
            addrs: vec![zero; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        }
    }
}

pub fn recv(
    sock: &UdpSocket,
    slots: &mut Slots,
    mut f: impl FnMut(SocketAddr, &[u8]),
) -> io::Result<usize> {
    let Slots {
        data,
        addrs,
        iovs,
        hdrs,
    } = slots;
    iovs.clear();
    hdrs.clear();
    for chunk in data.chunks_exact_mut(RECV_BUF) {
        iovs.push(libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: RECV_BUF,
        });
    }
    for (iov, addr) in iovs.iter_mut().zip(addrs.iter_mut()) {
        // SAFETY: all-zero is a valid mmsghdr (plain C struct); the pointers set below stay
        // valid for the call (they point into `slots`, borrowed mutably for its duration).
        let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        hdrs.push(hdr);
    }
    let fd = sock.as_raw_fd();
    let n = sock.try_io(Interest::READABLE, || {
        // SAFETY: `hdrs` holds `hdrs.len()` initialised headers whose buffers are valid.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })?;
    for (i, hdr) in hdrs.iter().enumerate().take(n) {
        let len = (hdr.msg_len as usize).min(RECV_BUF);
        let Some(from) = socket_addr(&addrs[i]) else {
            continue;
        };
        f(from, &data[i * RECV_BUF..i * RECV_BUF + len]);
    }
    Ok(n)
}

/// Messages per `sendmmsg`.
pub const SEND_BATCH: usize = 64;
/// Datagrams per `sendmmsg`, over all its messages.
const SEND_MAX_DATAGRAMS: usize = 256;
/// UDP GSO: at most this many segments per message (the kernel's limit is 64 before Linux 6.x).
const GSO_MAX_SEGMENTS: usize = 64;
/// Only datagrams this small are segmented: the kernel refuses (EINVAL) a segment larger than the
/// path's MTU, where a lone datagram would be fragmented; 1,452 fits a 1,500-byte MTU over IPv6.
const GSO_MAX_SEGMENT: usize = 1452;
/// A message's payload stays under the 64 KiB an IP packet can carry.
const GSO_MAX_BYTES: usize = 65_000;

/// Set once a GSO message was refused (a kernel without `UDP_SEGMENT`, a device that cannot
/// checksum it, a path MTU below `GSO_MAX_SEGMENT`): from then on every datagram is its own message.
static GSO_REFUSED: AtomicBool = AtomicBool::new(false);

/// One message of a `sendmmsg`: `count` datagrams from `first`, split by the kernel into
/// `segment`-byte datagrams when `count > 1` (all but the last are exactly `segment` bytes).
#[derive(Clone, Copy, Default)]
struct Message {
    first: usize,
    count: usize,
    segment: usize,
    last_len: usize,
    bytes: usize,
}

impl Message {
    fn takes(&self, len: usize) -> bool {
        // Empty datagrams stay on their own: a segment size of 0 is invalid, and an empty last
        // segment would add no bytes, so the kernel would not send it.
        len > 0
            && self.last_len == self.segment
            && len <= self.segment
            && self.segment <= GSO_MAX_SEGMENT
            && self.count < GSO_MAX_SEGMENTS
            && self.bytes + len <= GSO_MAX_BYTES
    }
}

/// Room for one `UDP_SEGMENT` control message (a `u16`), aligned like a `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegmentCmsg([u8; 32]);

/// `sendmmsg` to `to` (or the connected peer when `None`): one system call for up to
/// `SEND_MAX_DATAGRAMS` datagrams (the per-datagram `send` was, with its wake-up, the largest cost
/// at high packet rates). Runs of equal-size datagrams go out as one UDP GSO message each (the
/// kernel splits them; on loopback the receiving socket does), which saves the IP and UDP layers'
/// work per datagram.
/// Returns how many datagrams were sent; an error is about the first datagram (none was sent).
pub fn send<'a>(
    sock: &UdpSocket,
    to: Option<&SockAddr>,
    datagrams: impl Iterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    let gso = !GSO_REFUSED.load(Ordering::Relaxed);
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; SEND_MAX_DATAGRAMS];
    let mut messages = [Message::default(); SEND_BATCH];
    let mut count = 0;
    for (used, data) in datagrams.take(SEND_MAX_DATAGRAMS).enumerate() {
        let len = data.len();
        if gso && count > 0 && messages[count - 1].takes(len) {
            let m = &mut messages[count - 1];
            m.count += 1;
            m.last_len = len;
            m.bytes += len;
        } else if count < SEND_BATCH {
            messages[count] = Message {
                first: used,
                count: 1,
                segment: len,
                last_len: len,
                bytes: len,
            };
            count += 1;
        } else {
            break;
        }
        // sendmmsg only reads through the pointer.
        iovs[used] = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: len,
        };
    }
    if count == 0 {
        return Ok(0);
    }
    let mut cmsgs = [SegmentCmsg([0; 32]); SEND_BATCH];
    // SAFETY: all-zero is a valid mmsghdr (plain C struct): no address, no control data; the
    // pointers set below stay valid for the call (they point into `iovs` and `cmsgs`, which outlive
    // it, the iovecs into the borrowed datagrams, the name into the borrowed `to`).
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for ((hdr, m), cmsg) in hdrs
        .iter_mut()
        .zip(&messages)
        .zip(cmsgs.iter_mut())
        .take(count)
    {
        if let Some(to) = to {
            // sendmmsg only reads through the pointer.
            hdr.msg_hdr.msg_name = to.as_ptr().cast_mut().cast();
            hdr.msg_hdr.msg_namelen = to.len();
        }
        hdr.msg_hdr.msg_iov = &mut iovs[m.first];
        hdr.msg_hdr.msg_iovlen = m.count as _;
        if m.count > 1 {
            set_segment(&mut hdr.msg_hdr, cmsg, m.segment as u16);
        }
    }
    let fd = sock.as_raw_fd();
    let sent = sock.try_io(Interest::WRITABLE, || {
        // SAFETY: the first `count` headers are initialised and their buffers valid.
        let n =
            unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as _, libc::MSG_DONTWAIT as _) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    });
    match sent {
        Ok(n) => Ok(messages[..n].iter().map(|m| m.count).sum()),
        Err(e) if messages[0].count > 1 && gso_refused(&e) => {
            GSO_REFUSED.store(true, Ordering::Relaxed);
            let first = messages[0];
            // SAFETY: each iovec points into a datagram borrowed for this call.
            let retry: Vec<&[u8]> = iovs[first.first..first.first + first.count]
                .iter()
                .map(|iov| unsafe {
                    std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
                })
                .collect();
            send_slices(sock, to, &retry)
        }
        Err(e) => Err(e),
    }
}

/// Non-generic entry for the retry without GSO (a generic call would recurse on its own type).
fn send_slices(sock: &UdpSocket, to: Option<&SockAddr>, datagrams: &[&[u8]]) -> io::Result<usize> {
    send(sock, to, datagrams.iter().copied())
}

/// Errors that mean "no GSO here" rather than "this datagram cannot go".
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

/// Adds a `UDP_SEGMENT` control message to `hdr`.
fn set_segment(hdr: &mut libc::msghdr, buf: &mut SegmentCmsg, segment: u16) {
    let value = segment.to_ne_bytes();
    // SAFETY: CMSG_SPACE of a u16 (24 bytes on 64-bit Linux) fits the 32-byte, 8-aligned buffer;
    // CMSG_FIRSTHDR is then non-null and CMSG_DATA points inside the buffer.
    unsafe {
        let space = libc::CMSG_SPACE(value.len() as _) as usize;
        debug_assert!(space <= buf.0.len());
        hdr.msg_control = buf.0.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(value.len() as _) as _;
        std::ptr::copy_nonoverlapping(value.as_ptr(), libc::CMSG_DATA(cmsg), value.len());
    }
}

fn socket_addr(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Datagrams of mixed sizes (runs that GSO merges, sizes that end a run, sizes too large to
    /// segment) arrive one by one, in order, intact: through a connected socket and through an
    /// unconnected one that names the peer in each message.
    #[test]
    fn batched_send_delivers_every_datagram_in_order() -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let rx = UdpSocket::bind("127.0.0.1:0").await?;
            socket2::SockRef::from(&rx).set_recv_buffer_size(8 * 1024 * 1024)?;
            let connected = UdpSocket::bind("127.0.0.1:0").await?;
            connected.connect(rx.local_addr()?).await?;
            let unconnected = UdpSocket::bind("127.0.0.1:0").await?;
            let to = SockAddr::from(rx.local_addr()?);
            let mut sizes = vec![1200; 70];
            sizes.extend([500, 1200, 1200, 1200]);
            sizes.extend(vec![64; 100]);
            sizes.extend([1500, 1500, 9000, 1, 1, 0, 0, 0, 64, 64]);
            let datagrams: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i + j) as u8).collect())
                .collect();
            for (sock, to) in [(&connected, None), (&unconnected, Some(&to))] {
                sock.writable().await?;
                let mut sent = 0;
                while sent < datagrams.len() {
                    let n = send(sock, to, datagrams[sent..].iter().map(|d| &d[..]))?;
                    assert!(n > 0);
                    sent += n;
                }
                let mut buf = vec![0u8; 65_536];
                for (i, want) in datagrams.iter().enumerate() {
                    let (n, from) =
                        tokio::time::timeout(Duration::from_secs(5), rx.recv_from(&mut buf))
                            .await
                            .map_err(|_| {
                                io::Error::new(io::ErrorKind::TimedOut, format!("datagram {i}"))
                            })??;
                    assert_eq!(from, sock.local_addr()?);
                    assert_eq!(&buf[..n], &want[..], "datagram {i} of {} bytes", want.len());
                }
            }
            assert!(
                !GSO_REFUSED.load(Ordering::Relaxed),
                "the kernel refused UDP GSO"
            );
            Ok(())
        })
    }
}

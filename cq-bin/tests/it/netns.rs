//! Hosts as network namespaces (root only): two namespaces joined by a veth pair, each with
//! its own loopback, so that a test can have a server, its local clients, and another host
//! on the network. Traffic never leaves them.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two hosts, `a` and `b`, on one link.
pub(crate) struct HostPair {
    pub(crate) a: String,
    pub(crate) b: String,
}

impl HostPair {
    /// The address of host `a` on the link.
    pub(crate) const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
    /// The address of host `b` on the link.
    pub(crate) const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

    /// Makes the two namespaces and the link (removed on drop).
    pub(crate) fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("cqt-{}-{n}", std::process::id());
        let pair = Self {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        for ns in [&pair.a, &pair.b] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link", "add", "eth0", "netns", &pair.a, "type", "veth", "peer", "name", "eth0",
            "netns", &pair.b,
        ]);
        for (ns, addr) in [(&pair.a, Self::A_ADDR), (&pair.b, Self::B_ADDR)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        pair
    }

    /// The prefix that runs a program on host `ns`.
    pub(crate) fn on(ns: &str) -> Vec<OsString> {
        ["ip", "netns", "exec", ns].map(OsString::from).to_vec()
    }
}

impl Drop for HostPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2) runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

//! Hosts as network namespaces (root only): two namespaces joined by a veth pair, or several
//! on a bridge of their own, each with its own loopback, so that a test can have a server,
//! its local clients, and other hosts on the network. Traffic never leaves them.

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

/// Several hosts on one bridge (in a namespace of its own): host `i` (from 1) has address
/// 10.214.0.`i`.
pub(crate) struct Lan {
    hub: String,
    pub(crate) hosts: Vec<String>,
}

impl Lan {
    /// Makes `count` hosts and their bridge (removed on drop).
    pub(crate) fn new(count: u8) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("cqt-{}-{n}", std::process::id());
        let lan = Self {
            hub: format!("{base}-hub"),
            hosts: (1..=count).map(|i| format!("{base}-h{i}")).collect(),
        };
        ip(&["netns", "add", &lan.hub]);
        ip(&["-n", &lan.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.hub, "link", "set", "br0", "up"]);
        for (i, host) in lan.hosts.iter().enumerate() {
            let port = format!("p{}", i + 1);
            ip(&["netns", "add", host]);
            ip(&["-n", host, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", &port,
                "netns", &lan.hub,
            ]);
            ip(&["-n", &lan.hub, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{}/24", Self::addr(i + 1));
            ip(&["-n", host, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", host, "link", "set", "eth0", "up"]);
        }
        lan
    }

    /// The address of host `i` (from 1).
    pub(crate) fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, 0, u8::try_from(i).expect("a small LAN"))
    }

    /// Host `i` (from 1).
    pub(crate) fn host(&self, i: usize) -> &str {
        &self.hosts[i - 1]
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.hub]) {
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

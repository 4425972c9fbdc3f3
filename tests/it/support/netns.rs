//! Real partitions on real (virtual) hosts: a private network of Linux network namespaces, one
//! per host of the topology (Redis, each replica, nginx), joined by veth pairs to a bridge in a
//! hub namespace, plus a veth from the test's own namespace so the test reaches every host. Each
//! run picks a random `10.77.x.0/24` and random names, so parallel tests and leftovers of an
//! aborted run do not collide. Faults are made where a real network makes them: iptables DROP
//! rules in a host's namespace (a black hole: no RST, no ICMP), random loss with iptables'
//! `statistic` match, and `tc netem` delay where the kernel has it.
//!
//! [`NetCluster`] runs the usual programs (from [`super::servers`]) in those namespaces and
//! hands back a [`TestCluster`] whose addresses are the namespace addresses, so every request
//! helper works unchanged. Dropping it kills the processes it started (by PID) and deletes the
//! namespaces and veths it created. Where namespaces cannot be made (not root, no `ip`), the
//! constructor says why in one line and the test skips; what runs in the topology is left to
//! the tests.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process::Proc;
use super::servers::{Nginx, ReplicaEnv, ReplicaProc, launched, wait_listening};
use super::{API_KEY, TestCluster};

/// Subnets this process has taken, so parallel tests in one binary never pick the same one.
static TAKEN: Mutex<Option<HashSet<u8>>> = Mutex::new(None);

/// The port every replica listens on (each in its own namespace, so they never clash).
pub const REPLICA_PORT: u16 = 8000;
pub const REDIS_PORT: u16 = 6379;
pub const NGINX_PORT: u16 = 8080;

fn ip_program() -> Result<PathBuf, String> {
    stickyws::ops::host::find("ip", "iproute2", None).map_err(|e| e.to_string())
}

/// Runs `program args…`; its stderr on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// The private network: a hub with a bridge, a namespace per host, a veth from the test's own.
pub struct Net {
    pub subnet: u8,
    suffix: String,
    hosts: Vec<String>,
    namespaces: Vec<String>,
    root_veth: Option<String>,
}

impl Net {
    /// A network with these hosts, each with an address (see [`Net::ip`]); `Err` says why
    /// namespaces cannot be made here.
    pub fn create(hosts: &[&str]) -> Result<Net, String> {
        ip_program()?;
        stickyws::ops::host::find("iptables", "iptables", None).map_err(|e| e.to_string())?;
        let suffix = format!("{:06x}", random_u32() & 0xff_ffff);
        let subnet = Self::pick_subnet()?;
        let mut net = Net {
            subnet,
            suffix,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            namespaces: Vec::new(),
            root_veth: None,
        };
        let result = net.build();
        // A failure halfway leaves what was made to Drop, which deletes it.
        result.map(|()| net)
    }

    fn pick_subnet() -> Result<u8, String> {
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        let taken = taken.get_or_insert_with(HashSet::new);
        let routes = Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .map_err(|e| format!("ip route: {e}"))?;
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        let start = random_u32();
        for i in 0..254u32 {
            let x = ((start.wrapping_add(i)) % 254 + 1) as u8;
            if !taken.contains(&x) && !routes.contains(&format!("10.77.{x}.")) {
                taken.insert(x);
                return Ok(x);
            }
        }
        Err("no free 10.77.x.0/24 subnet".to_owned())
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub();
        run("ip", &["netns", "add", &hub])?;
        self.namespaces.push(hub.clone());
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, host) in self.hosts.clone().iter().enumerate() {
            let ns = self.ns(host);
            run("ip", &["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            let (a, b) = (
                format!("swa{i}{}", self.suffix),
                format!("swb{i}{}", self.suffix),
            );
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &a, "type", "veth", "peer", "name", &b,
                ],
            )?;
            run("ip", &["-n", &hub, "link", "set", &b, "netns", &ns])?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &a, "master", "br0", "up"],
            )?;
            run("ip", &["-n", &ns, "link", "set", &b, "name", "eth0"])?;
            let addr = format!("{}/24", self.ip(host));
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        // The test's own way in: one end in this namespace, the other on the bridge.
        let (root, peer) = (format!("swr{}", self.suffix), format!("swq{}", self.suffix));
        run(
            "ip",
            &[
                "-n", &hub, "link", "add", &root, "type", "veth", "peer", "name", &peer,
            ],
        )?;
        run("ip", &["-n", &hub, "link", "set", &root, "netns", "1"])?;
        self.root_veth = Some(root.clone());
        run(
            "ip",
            &["-n", &hub, "link", "set", &peer, "master", "br0", "up"],
        )?;
        let addr = format!("{}/24", self.root_ip());
        run("ip", &["addr", "add", &addr, "dev", &root])?;
        run("ip", &["link", "set", &root, "up"])?;
        Ok(())
    }

    fn hub(&self) -> String {
        format!("swhub-{}", self.suffix)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("sw-{}-{host}", self.suffix)
    }

    /// The test's own address on the network.
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// The address of `host`: .2, .3, … in the order the hosts were given.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        let at = self
            .hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        Ipv4Addr::new(10, 77, self.subnet, 2 + at as u8)
    }

    /// What runs a program inside `host`'s namespace.
    pub fn launcher(&self, host: &str) -> Vec<String> {
        vec![
            ip_program().unwrap().to_string_lossy().into_owned(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.ns(host),
        ]
    }

    /// `iptables args…` inside `host`'s namespace; panics with iptables' message on failure.
    pub fn iptables(&self, host: &str, args: &[&str]) {
        let ns = self.ns(host);
        let mut all = vec!["netns", "exec", &ns, "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all).unwrap();
    }

    /// Black-holes `host`'s traffic with `peer` (both directions, silently dropped) until
    /// [`Fault::heal`].
    pub fn cut(&self, host: &str, peer: Ipv4Addr) -> Fault<'_> {
        let peer = peer.to_string();
        self.fault(
            host,
            vec![
                vec!["OUTPUT", "-d", &peer, "-j", "DROP"],
                vec!["INPUT", "-s", &peer, "-j", "DROP"],
            ],
        )
    }

    /// Black-holes everything `host` sends or receives on the network (loopback stays).
    pub fn isolate(&self, host: &str) -> Fault<'_> {
        self.fault(
            host,
            vec![
                vec!["OUTPUT", "-o", "eth0", "-j", "DROP"],
                vec!["INPUT", "-i", "eth0", "-j", "DROP"],
            ],
        )
    }

    /// Drops each packet `host` exchanges with `peer` with probability `p` (both directions).
    pub fn loss(&self, host: &str, peer: Ipv4Addr, p: f64) -> Fault<'_> {
        let peer = peer.to_string();
        let p = format!("{p}");
        let statistic = ["-m", "statistic", "--mode", "random", "--probability", &p];
        let mut out = vec!["OUTPUT", "-d", &peer];
        let mut inp = vec!["INPUT", "-s", &peer];
        for rule in [&mut out, &mut inp] {
            rule.extend_from_slice(&statistic);
            rule.extend_from_slice(&["-j", "DROP"]);
        }
        self.fault(host, vec![out, inp])
    }

    fn fault(&self, host: &str, rules: Vec<Vec<&str>>) -> Fault<'_> {
        for rule in &rules {
            let mut args = vec!["-A"];
            args.extend_from_slice(rule);
            self.iptables(host, &args);
        }
        Fault {
            net: self,
            host: host.to_owned(),
            rules: rules
                .into_iter()
                .map(|r| r.into_iter().map(str::to_owned).collect())
                .collect(),
        }
    }

    /// Whether `tc netem` works here (not every kernel is built with it).
    pub fn has_netem(&self, host: &str) -> bool {
        let ns = self.ns(host);
        let added = run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                "1ms",
            ],
        );
        let _ = run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "lo", "root",
            ],
        );
        added.is_ok()
    }
}

/// Rules added to one host's firewall; [`Fault::heal`] removes them (dropping the network
/// removes them too).
pub struct Fault<'a> {
    net: &'a Net,
    host: String,
    rules: Vec<Vec<String>>,
}

impl Fault<'_> {
    pub fn heal(self) {
        for rule in &self.rules {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            self.net.iptables(&self.host, &args);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veths in it, and with them their peers; the test's
        // end is deleted by name as well, in case its peer was never moved.
        if let Some(root) = &self.root_veth {
            let _ = run("ip", &["link", "del", root]);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        if let Some(taken) = TAKEN.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            taken.remove(&self.subnet);
        }
    }
}

/// Redis, `n` replicas app-1..app-n and nginx, each in its own namespace of a [`Net`].
/// Fields drop in order: the programs first, then the network.
pub struct NetCluster {
    pub cluster: Arc<TestCluster>,
    pub redis: Proc,
    pub net: Net,
}

impl NetCluster {
    /// The topology, or `None` after one line saying why namespaces cannot be made here.
    /// `redis_url_of` may give a replica another Redis address than Redis's own (a test's relay).
    pub fn start(n: usize) -> Option<NetCluster> {
        Self::start_with(n, |_, _| None)
    }

    pub fn start_with(
        n: usize,
        redis_url_of: impl Fn(&Net, &str) -> Option<String>,
    ) -> Option<NetCluster> {
        Self::build(n, redis_url_of, &[])
    }

    /// The topology with these settings in every replica's environment.
    pub fn start_with_settings(n: usize, settings: &[(&str, &str)]) -> Option<NetCluster> {
        Self::build(n, |_, _| None, settings)
    }

    fn build(
        n: usize,
        redis_url_of: impl Fn(&Net, &str) -> Option<String>,
        settings: &[(&str, &str)],
    ) -> Option<NetCluster> {
        let mut hosts = vec!["redis".to_owned(), "nginx".to_owned()];
        hosts.extend((1..=n).map(|i| format!("app-{i}")));
        let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let net = match Net::create(&names) {
            Ok(net) => net,
            Err(why) => {
                eprintln!("skipping: cannot make network namespaces here ({why})");
                return None;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let redis = start_redis(&net, &dir);
        let redis_url = format!("redis://{}:{REDIS_PORT}", net.ip("redis"));
        let env = ReplicaEnv {
            redis_url: Some(redis_url),
            secret: "test-secret-0123456789abcdef".to_owned(),
            api_key: API_KEY.to_owned(),
            records_log: dir
                .path()
                .join("records.log")
                .to_string_lossy()
                .into_owned(),
            extra: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut replicas = Vec::new();
        for i in 1..=n {
            let name = format!("app-{i}");
            let addr = SocketAddr::from((net.ip(&name), REPLICA_PORT));
            let mut own = env.clone();
            if let Some(url) = redis_url_of(&net, &name) {
                own.redis_url = Some(url);
            }
            replicas.push(ReplicaProc::start_at(
                &name,
                addr,
                &own,
                dir.path(),
                &net.launcher(&name),
            ));
        }
        let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
        let nginx = Nginx::start_at(
            SocketAddr::from((net.ip("nginx"), NGINX_PORT)),
            &addrs,
            dir.path(),
            &net.launcher("nginx"),
        );
        let cluster = TestCluster {
            dir,
            redis: None,
            replicas,
            nginx: Some(nginx),
            env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        Some(NetCluster {
            cluster: Arc::new(cluster),
            redis,
            net,
        })
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.redis.log_tail());
        }
    }
}

/// redis-server in the `redis` namespace, on its address and loopback, ready once it answers
/// PING from the test's namespace.
fn start_redis(net: &Net, dir: &tempfile::TempDir) -> Proc {
    use std::io::{Read, Write};
    let program = stickyws::ops::redis_server::program().unwrap_or_else(|e| panic!("{e}"));
    let bind = format!("{} 127.0.0.1", net.ip("redis"));
    let args =
        stickyws::ops::redis_server::args(REDIS_PORT, &["--bind", &bind, "--protected-mode", "no"]);
    let mut command = launched(&net.launcher("redis"), &program);
    command.args(&args);
    let mut proc = Proc::spawn("redis", &mut command, dir.path());
    let addr = SocketAddr::from((net.ip("redis"), REDIS_PORT));
    wait_listening(addr, &mut proc, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                s.write_all(b"PING\r\n")?;
                let mut buf = [0u8; 7];
                s.read_exact(&mut buf)?;
                Ok(buf)
            });
        if pong.is_ok_and(|b| &b == b"+PONG\r\n") {
            return proc;
        }
        assert!(Instant::now() < deadline, "{}", proc.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

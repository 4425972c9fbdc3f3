//! Runs the repository's `nginx.conf` outside Docker: the upstream addresses `appN:8000` become
//! loopback addresses and `listen 80` a free port. Nothing else changes, so the routing the local
//! cluster and the tests exercise is the routing that ships.
//!
//! The shipped file names three replicas. For another number, the per-replica lines (the map
//! entry, the round-robin server, the `sticky_appN` upstream with the others as backups) are
//! repeated in the same shape; for three the result is exactly the address rewrite (a test
//! holds it to that).

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Why the file could not be rewritten.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error("nginx.conf must contain exactly one `listen 80;` (found {0})")]
    Listen(usize),
    #[error("nginx.conf has no `{0}` to rewrite")]
    Missing(&'static str),
    #[error("a replica count of {0} is not supported (1 to 99)")]
    Replicas(usize),
}

/// The configuration for `replicas` (replica N at index N-1) listening on `listen`.
pub fn render(
    conf: &str,
    listen: SocketAddr,
    replicas: &[SocketAddr],
) -> Result<String, ConfError> {
    let n = replicas.len();
    if !(1..=99).contains(&n) {
        return Err(ConfError::Replicas(n));
    }
    let expanded = expand(conf, n)?;
    let listens = expanded
        .lines()
        .filter(|l| l.trim() == "listen 80;")
        .count();
    if listens != 1 {
        return Err(ConfError::Listen(listens));
    }
    let mut out = expanded.replacen("listen 80;", &format!("listen {listen};"), 1);
    // Highest numbers first, so app1 never matches inside app10.
    for (i, addr) in replicas.iter().enumerate().rev() {
        out = out.replace(&format!("app{}:8000", i + 1), &addr.to_string());
    }
    Ok(out)
}

/// Which replica a per-replica line is about, and what kind of line it is.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Line {
    /// `app-K sticky_appK;` in the cookie map.
    MapEntry(usize),
    /// `server appK:8000;` in the round-robin upstream.
    RoundRobin(usize),
    /// `upstream sticky_appK {` opening a per-replica upstream.
    StickyStart(usize),
    Other,
}

fn classify(line: &str) -> Line {
    let t = line.trim();
    let number = |s: &str| s.parse::<usize>().ok().filter(|k| *k > 0);
    if let Some(rest) = t.strip_prefix("app-")
        && let Some((k, target)) = rest.split_once(char::is_whitespace)
        && let Some(k) = number(k)
        && target.trim() == format!("sticky_app{k};")
    {
        return Line::MapEntry(k);
    }
    if let Some(rest) = t.strip_prefix("server app")
        && let Some(k) = rest.strip_suffix(":8000;").and_then(number)
    {
        return Line::RoundRobin(k);
    }
    if let Some(rest) = t.strip_prefix("upstream sticky_app")
        && let Some(k) = rest.strip_suffix(" {").and_then(number)
    {
        return Line::StickyStart(k);
    }
    Line::Other
}

/// Repeats the per-replica lines for `n` replicas, using replica 1's lines as the pattern.
fn expand(conf: &str, n: usize) -> Result<String, ConfError> {
    let lines: Vec<&str> = conf.lines().collect();
    let mut out = String::with_capacity(conf.len() * 2);
    let (mut saw_map, mut saw_rr, mut saw_sticky) = (false, false, false);
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        match classify(line) {
            Line::MapEntry(k) => {
                if k == 1 {
                    saw_map = true;
                    for r in 1..=n {
                        let _ = writeln!(
                            out,
                            "{}",
                            line.replace("app-1", &format!("app-{r}"))
                                .replace("sticky_app1", &format!("sticky_app{r}"))
                        );
                    }
                }
                i += 1;
            }
            Line::RoundRobin(k) => {
                if k == 1 {
                    saw_rr = true;
                    for r in 1..=n {
                        let _ = writeln!(out, "{}", line.replace("app1:", &format!("app{r}:")));
                    }
                }
                i += 1;
            }
            Line::StickyStart(k) => {
                // The block runs to its closing brace; a blank line may follow it.
                let end = (i..lines.len())
                    .find(|&j| lines[j].trim() == "}")
                    .ok_or(ConfError::Missing("closing } of a sticky upstream"))?;
                let mut next = end + 1;
                if next < lines.len() && lines[next].trim().is_empty() {
                    next += 1;
                }
                if k == 1 {
                    saw_sticky = true;
                    let block = &lines[i..=end];
                    let trailing_blank = next > end + 1;
                    for r in 1..=n {
                        write_sticky_block(&mut out, block, r, n);
                        if trailing_blank || r < n {
                            out.push('\n');
                        }
                    }
                }
                i = next;
            }
            Line::Other => {
                out.push_str(line);
                out.push('\n');
                i += 1;
            }
        }
    }
    if !saw_map {
        return Err(ConfError::Missing("app-1 sticky_app1;"));
    }
    if !saw_rr {
        return Err(ConfError::Missing("server app1:8000;"));
    }
    if !saw_sticky {
        return Err(ConfError::Missing("upstream sticky_app1 {"));
    }
    Ok(out)
}

/// Replica `r`'s upstream, shaped like replica 1's: `r` first, every other replica a backup.
fn write_sticky_block(out: &mut String, block: &[&str], r: usize, n: usize) {
    let primary = block.iter().find(|l| l.trim() == "server app1:8000;");
    let backup = block.iter().find(|l| l.trim().ends_with(":8000 backup;"));
    let mut wrote_servers = false;
    for line in block {
        let t = line.trim();
        if t.starts_with("upstream sticky_app1") {
            let _ = writeln!(
                out,
                "{}",
                line.replace("sticky_app1", &format!("sticky_app{r}"))
            );
        } else if t.starts_with("server app") {
            if wrote_servers {
                continue;
            }
            wrote_servers = true;
            if let Some(p) = primary {
                let _ = writeln!(out, "{}", p.replace("app1:", &format!("app{r}:")));
            }
            if let Some(b) = backup {
                let name = b
                    .trim()
                    .trim_start_matches("server ")
                    .split(':')
                    .next()
                    .unwrap_or("");
                for other in (1..=n).filter(|o| *o != r) {
                    let _ = writeln!(out, "{}", b.replace(name, &format!("app{other}")));
                }
            }
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../nginx.conf");

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
            .collect()
    }

    fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }

    #[test]
    fn for_three_replicas_only_addresses_and_the_port_change() {
        let rendered = render(SHIPPED, listen(), &addrs(3)).unwrap();
        let by_hand = SHIPPED
            .replace("listen 80;", "listen 127.0.0.1:8080;")
            .replace("app1:8000", "127.0.0.1:9001")
            .replace("app2:8000", "127.0.0.1:9002")
            .replace("app3:8000", "127.0.0.1:9003");
        assert_eq!(rendered, by_hand);
    }

    #[test]
    fn five_replicas_get_a_map_entry_a_round_robin_server_and_an_upstream_each() {
        let rendered = render(SHIPPED, listen(), &addrs(5)).unwrap();
        for k in 1..=5 {
            assert!(
                rendered.contains(&format!("app-{k}   sticky_app{k};")),
                "{rendered}"
            );
            assert!(
                rendered.contains(&format!("upstream sticky_app{k} {{")),
                "{rendered}"
            );
        }
        let block = rendered
            .split("upstream sticky_app4 {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap();
        let servers: Vec<&str> = block
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("server"))
            .collect();
        assert_eq!(
            servers,
            vec![
                "server 127.0.0.1:9004;",
                "server 127.0.0.1:9001 backup;",
                "server 127.0.0.1:9002 backup;",
                "server 127.0.0.1:9003 backup;",
                "server 127.0.0.1:9005 backup;",
            ]
        );
        assert!(
            !rendered.contains("app6")
                && !rendered
                    .lines()
                    .any(|l| l.trim_start().starts_with("server app")),
            "{rendered}"
        );
    }

    #[test]
    fn one_replica_keeps_only_its_own_lines() {
        let rendered = render(SHIPPED, listen(), &addrs(1)).unwrap();
        assert!(!rendered.contains("sticky_app2"));
        assert!(!rendered.contains("backup;"));
        assert!(rendered.contains("server 127.0.0.1:9001;"));
    }

    #[test]
    fn a_file_without_the_listen_line_is_refused() {
        let broken = SHIPPED.replace("listen 80;", "listen 81;");
        assert_eq!(
            render(&broken, listen(), &addrs(3)),
            Err(ConfError::Listen(0))
        );
    }
}

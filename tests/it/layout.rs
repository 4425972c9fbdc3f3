//! The crates' shape: the top-level modules of the gateway and of the load tool import each other without a circle, so each can be
//! read (and tested) after the ones it uses. Read from the sources, the way a reviewer would
//! check it: every `crate::<module>` path outside comments and test modules is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it uses.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Tests may reach anywhere; what counts is the code a replica runs.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let uses = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            for dep in used_modules(line) {
                if dep != module {
                    uses.insert(dep);
                }
            }
        }
    }
    graph
}

/// `crate::a::…` and the names in `use crate::{a, b::…}` on one line.
fn used_modules(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in line.match_indices("crate::") {
        let rest = &line[at + "crate::".len()..];
        let names = match rest.strip_prefix('{') {
            Some(group) => group.split('}').next().unwrap_or("").to_owned(),
            None => rest.to_owned(),
        };
        for part in names.split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// One circle through `graph`, if there is any.
fn a_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(graph, next, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(graph, start, &mut Vec::new(), &mut done))
}

fn assert_no_circle(crate_src: &str, a_known_edge: (&str, &str)) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate_src);
    let graph = import_graph(&src);
    assert!(
        graph.len() > 10,
        "read the modules of {crate_src}: {graph:?}"
    );
    let (from, to) = a_known_edge;
    assert!(
        graph[from].contains(to),
        "the reader sees real edges: {graph:?}"
    );
    if let Some(circle) = a_circle(&graph) {
        panic!(
            "modules of {crate_src} import in a circle: {}",
            circle.join(" -> ")
        );
    }
}

#[test]
fn the_gateways_modules_import_no_circle() {
    assert_no_circle("src", ("delivery", "registry"));
}

#[test]
fn the_load_tools_modules_import_no_circle() {
    assert_no_circle("load/src", ("socket", "client"));
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(a_circle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        a_circle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        used_modules("use crate::{broker::Broker, frame::Via};  x crate::token::ClientId"),
        vec!["broker", "frame", "token"]
    );
}

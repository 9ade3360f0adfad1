//! The house rules, checked on the source tree (docs/ARCHITECTURE.md, "House rules"):
//! - no file under `src/` or `kernels/` is longer than `MAX_LINES`;
//! - no loop between modules: module A uses module B, and B (directly or through others) uses A.
//!
//! A module is a file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). An edge A -> B is any path
//! in A's code that names an item of B: `crate::...`, `super::...`, `self::...` in `use`
//! statements (brace groups expanded) or inline. Two kinds of reference are structure, not use:
//! `mod child;` declarations, and a parent's `pub use` of its own descendants (a facade). Test
//! modules (`#[cfg(test)] mod ... { }`) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 900;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| ext.iter().any(|e| x == *e)) {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` or `src/a/b/mod.rs` -> ["a", "b"]; `src/lib.rs` and `src/main.rs` -> [].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without comments, string literals and `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |j| i + 2 + j + 2);
            i = end;
        } else if b[i] == b'"' && !(i > 0 && b[i - 1] == b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i..].starts_with(b"#[cfg(test)]") {
            // Skip the attribute and the item after it when it is a module with a body.
            let rest = &text[i + 12..];
            let t = rest.trim_start();
            if t.starts_with("mod ") || t.starts_with("pub mod ") {
                let open = rest.find('{');
                let semi = rest.find(';');
                if let (Some(o), true) = (open, semi.is_none_or(|s| s > open.unwrap())) {
                    let mut depth = 0usize;
                    let mut j = i + 12 + o;
                    while j < b.len() {
                        match b[j] {
                            b'{' => depth += 1,
                            b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    i = j + 1;
                    continue;
                }
            }
            i += 12;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expand a `use` tree (`a::{b, c::{d, e}}`) into its full paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    match tree.find('{') {
        None => vec![tree.split(" as ").next().unwrap().trim().to_string()],
        Some(o) => {
            let prefix = &tree[..o];
            let inner = &tree[o + 1..tree.rfind('}').unwrap()];
            let mut parts = Vec::new();
            let (mut depth, mut start) = (0, 0);
            for (j, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(&inner[start..j]);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            parts.push(&inner[start..]);
            parts
                .into_iter()
                .filter(|p| !p.trim().is_empty())
                .flat_map(|p| expand(p).into_iter().map(move |s| if s == "self" { prefix.trim_end_matches("::").to_string() } else { format!("{prefix}{s}") }))
                .collect()
        }
    }
}

/// Every path this code names, with whether it is structural (a facade `pub use`).
fn paths(code: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let use_re = regex::Regex::new(r"(?s)\b(pub(\([a-z]+\))?\s+)?use\s+([^;]+);").unwrap();
    let mut rest = String::with_capacity(code.len());
    let mut last = 0;
    for m in use_re.captures_iter(code) {
        let whole = m.get(0).unwrap();
        rest.push_str(&code[last..whole.start()]);
        last = whole.end();
        let public = m.get(1).is_some();
        for p in expand(&m[3].split_whitespace().collect::<Vec<_>>().join(" ")) {
            out.push((p.replace(' ', ""), public));
        }
    }
    rest.push_str(&code[last..]);
    let inline = regex::Regex::new(r"\b[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)+").unwrap();
    for m in inline.find_iter(&rest) {
        out.push((m.as_str().to_string(), false));
    }
    out
}

/// The module a path names (the longest prefix that is a module of the crate), if any.
fn resolve(from: &[String], path: &str, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = match segs[0] {
        "crate" => Vec::new(),
        "self" => from.to_vec(),
        "super" => from.to_vec(),
        // A bare path names a child module (`use engine::Cuda;` in `cuda/mod.rs`), or is outside
        // the crate (`std::fs`).
        child if modules.contains(&[from, &[child.to_string()]].concat()) => from.to_vec(),
        _ => return None,
    };
    let mut k = 0;
    while k < segs.len() && segs[k] == "super" {
        base.pop();
        k += 1;
    }
    if segs[0] == "crate" || segs[0] == "self" {
        k = 1;
    }
    let mut best = base.clone();
    for s in &segs[k..] {
        base.push(s.to_string());
        if modules.contains(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    Some(best)
}

fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut all = Vec::new();
    files(src, &["rs"], &mut all);
    // main.rs is its own crate root; its `crate::` is the binary's, not the library's.
    let lib: Vec<PathBuf> = all.into_iter().filter(|p| !p.ends_with("main.rs")).collect();
    let modules: BTreeSet<Vec<String>> = lib.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &lib {
        let me = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let mut edges = BTreeSet::new();
        for (p, public) in paths(&code(&text)) {
            let Some(to) = resolve(&me, &p, &modules) else { continue };
            let below = to.len() > me.len() && to.starts_with(&me);
            if to == me || (public && below) {
                continue;
            }
            edges.insert(to);
        }
        g.insert(me, edges);
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn loops(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let Some((w, _)) = t.g.get_key_value(w) else { continue };
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(if w.is_empty() { "crate".to_string() } else { w.join("::") });
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_file_is_too_long() {
    let mut all = Vec::new();
    files(&root().join("src"), &["rs", "c"], &mut all);
    files(&root().join("kernels"), &["cu", "cuh", "h", "cpp"], &mut all);
    assert!(all.len() > 20, "found only {} source files", all.len());
    let long: Vec<String> = all
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", p.strip_prefix(root()).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn no_module_loops() {
    let g = graph(&root().join("src"));
    let found = loops(&g);
    assert!(found.is_empty(), "modules that import each other (each group is a loop): {found:#?}");
}

#[test]
fn the_loop_finder_finds_loops() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let modules: BTreeSet<Vec<String>> = [m("a"), m("a::b"), m("c")].into_iter().collect();
    // `use` groups, `self` in a group, `super`, and inline paths all resolve to modules.
    let text = "use crate::{a::{self, b::Thing}, c};\nfn f() { super::x(); crate::c::y(); std::fs::read(\"crate::z\"); }\n// crate::z in a comment\n";
    let got: Vec<Vec<String>> = paths(&code(text)).iter().filter_map(|(p, _)| resolve(&m("a::b"), p, &modules)).collect();
    assert_eq!(got, vec![m("a"), m("a::b"), m("c"), m("a"), m("c")]);
    // A bare path from a parent names its child module.
    assert_eq!(resolve(&m("a"), "b::Thing", &modules), Some(m("a::b")));
    assert_eq!(resolve(&m("a"), "std::fs", &modules), None);
    // A three-module loop, a facade re-export that is not one, and a test module that is skipped.
    let mut g = BTreeMap::new();
    g.insert(m("a"), [m("c")].into_iter().collect());
    g.insert(m("c"), [m("a::b")].into_iter().collect());
    g.insert(m("a::b"), [m("a")].into_iter().collect());
    assert_eq!(loops(&g), vec![vec!["a".to_string(), "a::b".to_string(), "c".to_string()]]);
    g.insert(m("c"), BTreeSet::new());
    assert!(loops(&g).is_empty());
    assert!(!code("#[cfg(test)]\nmod tests {\n use super::*;\n}\nfn g() {}").contains("super"));
    let facade: Vec<(String, bool)> = paths("pub use b::Thing;\npub(crate) use self::b::Other;");
    assert!(facade.iter().all(|(_, public)| *public));
}

//! The engine's layout rule (docs/ARCHITECTURE.md): no import cycles between the files of
//! engine/src. Every `crate::…` and `super::…` path outside comments and test modules is an
//! edge from its file to the file that defines the path's longest module prefix; a cycle in
//! that graph fails the test and names its files and edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, relative to `root`.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(root).unwrap().to_owned());
        }
    }
}

/// The module path a file defines: `a/b.rs` and `a/b/mod.rs` are `[a, b]`; the crate roots `[]`.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The source without comments and without its `#[cfg(test)] mod tests` (tests may reach
/// anywhere).
fn code(src: &str) -> String {
    let lines: Vec<&str> = src.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let test_module = line.trim_start().starts_with("#[cfg(test)]")
            && lines.get(i + 1).is_some_and(|l| l.contains("mod "));
        if test_module
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_end().ends_with('{'))
        {
            break; // an inline test module, at the end of the file by convention
        }
        out.push_str(line.split("//").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

/// Paths after `prefix` (`crate::` or `super::`) in `code`: each as its segments, braces
/// expanded one level (`a::{b, c::d}` gives `[a, b]` and `[a, c]`).
fn paths(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `foo_crate::` or `super::super::` (the second is read by the first)
        }
        let mut segs = Vec::new();
        let mut s = rest;
        loop {
            let ident: String = s
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() {
                if let Some(inner) = s.strip_prefix('{') {
                    let end = inner.find('}').unwrap_or(inner.len());
                    for item in inner[..end].split(',') {
                        let first = item.trim().split("::").next().unwrap_or("").trim();
                        if !first.is_empty() && first != "self" {
                            let mut p = segs.clone();
                            p.push(first.to_owned());
                            out.push(p);
                        }
                    }
                    segs.clear();
                }
                break;
            }
            s = &s[ident.len()..];
            segs.push(ident);
            match s.strip_prefix("::") {
                Some(r) => s = r,
                None => break,
            }
        }
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

#[test]
fn engine_src_has_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &root, &mut files);
    let by_module: BTreeMap<Vec<String>, PathBuf> =
        files.iter().map(|f| (module_of(f), f.clone())).collect();
    // The file defining the longest module prefix of `path`.
    let resolve = |path: &[String]| {
        (1..=path.len())
            .rev()
            .find_map(|k| by_module.get(&path[..k]).cloned())
    };
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in &files {
        let src = code(&std::fs::read_to_string(root.join(f)).unwrap());
        let me = module_of(f);
        let parent = &me[..me.len().saturating_sub(1)];
        let mut targets = Vec::new();
        for p in paths(&src, "crate::") {
            targets.push(p);
        }
        for p in paths(&src, "super::") {
            targets.push(parent.iter().cloned().chain(p).collect());
        }
        for t in targets {
            if let Some(to) = resolve(&t) {
                if &to != f && !module_of(&to).is_empty() {
                    edges.entry(f.clone()).or_default().insert(to);
                }
            }
        }
    }
    assert!(
        edges.values().map(BTreeSet::len).sum::<usize>() > 100,
        "the scan found the engine's imports"
    );
    let cycles = strongly_connected(&files, &edges);
    let report: Vec<String> = cycles
        .iter()
        .map(|c| {
            c.iter()
                .map(|f| {
                    let to: Vec<String> = edges[f]
                        .iter()
                        .filter(|t| c.contains(*t))
                        .map(|t| t.display().to_string())
                        .collect();
                    format!("  {} -> {}", f.display(), to.join(", "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles in engine/src:\n{}",
        report.join("\n--\n")
    );
}

/// Tarjan's strongly connected components with more than one file.
fn strongly_connected(
    files: &[PathBuf],
    edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
) -> Vec<BTreeSet<PathBuf>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, (usize, usize)>,
        stack: Vec<&'a PathBuf>,
        next: usize,
        out: Vec<BTreeSet<PathBuf>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a PathBuf) {
        w.index.insert(v, (w.next, w.next));
        w.next += 1;
        w.stack.push(v);
        let edges = w.edges;
        for t in edges.get(v).into_iter().flatten() {
            match w.index.get(t).copied() {
                None => {
                    visit(w, t);
                    let low = w.index[t].1.min(w.index[v].1);
                    w.index.get_mut(v).unwrap().1 = low;
                }
                Some((i, _)) if w.stack.contains(&t) => {
                    let low = i.min(w.index[v].1);
                    w.index.get_mut(v).unwrap().1 = low;
                }
                Some(_) => {}
            }
        }
        let (i, low) = w.index[v];
        if i == low {
            let mut c = BTreeSet::new();
            while let Some(t) = w.stack.pop() {
                c.insert(t.clone());
                if t == v {
                    break;
                }
            }
            if c.len() > 1 {
                w.out.push(c);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: BTreeMap::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for f in files {
        if !w.index.contains_key(f) {
            visit(&mut w, f);
        }
    }
    w.out
}

#[test]
fn the_scan_sees_braces_super_and_skips_comments() {
    let src = "use crate::a::{b, c::D};\n// crate::z::y\nlet x = super::e::f();\n";
    let c = code(src);
    assert_eq!(
        paths(&c, "crate::"),
        vec![
            vec!["a".to_owned(), "b".to_owned()],
            vec!["a".to_owned(), "c".to_owned()]
        ]
    );
    assert_eq!(
        paths(&c, "super::"),
        vec![vec!["e".to_owned(), "f".to_owned()]]
    );
}

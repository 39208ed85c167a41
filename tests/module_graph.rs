//! The daemon's modules depend one way: no module of `src/` reaches a module
//! that reaches it back, directly or through others.
//!
//! A cycle between modules means neither can be read, tested or moved
//! without the other; it is how "the connector list" ended up needing "the
//! runtime". This test reads every file under `src/`, collects the paths it
//! names (`crate::a::b`, `super::c`, grouped `use` trees), and checks, inside
//! every folder, that its parts (files and subfolders, each taken whole, and
//! its own `mod.rs`) form a graph without cycles. A part naming its folder's
//! `mod.rs` counts as an arrow to it, so a child that reaches up into its
//! parent while the parent re-exports or calls the child is a cycle.
//!
//! It reads text, not the compiler's resolution: macros and glob imports are
//! followed only as far as their paths are written out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root, e.g. `["runtime", "source"]`;
/// `mod.rs` and `lib.rs` are the folder's own module.
type ModPath = Vec<String>;

struct Crate {
    root: PathBuf,
    /// Every module with a file, by path.
    modules: BTreeSet<ModPath>,
}

impl Crate {
    fn read(root: &Path) -> Crate {
        let mut modules = BTreeSet::new();
        collect(root, root, &mut modules);
        Crate { root: root.to_path_buf(), modules }
    }

    fn file_of(&self, m: &ModPath) -> PathBuf {
        if m.is_empty() {
            return self.root.join("lib.rs");
        }
        let dir = self.root.join(m.join("/"));
        if dir.join("mod.rs").exists() {
            dir.join("mod.rs")
        } else {
            self.root.join(format!("{}.rs", m.join("/")))
        }
    }

    /// The deepest module with a file that `path` (segments from the crate
    /// root) falls in; the rest of the path names items inside it.
    fn module_of(&self, path: &[String]) -> ModPath {
        let mut best = Vec::new();
        for n in 1..=path.len() {
            if self.modules.contains(&path[..n]) {
                best = path[..n].to_vec();
            } else {
                break;
            }
        }
        best
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeSet<ModPath>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, out);
            continue;
        }
        if p.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap();
        let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        let last = parts.pop().unwrap();
        match last.as_str() {
            "mod.rs" | "lib.rs" => {}
            "main.rs" => continue, // the binary is a separate crate
            other => parts.push(other.trim_end_matches(".rs").to_string()),
        }
        out.insert(parts);
    }
}

/// Removes comments and string literals (so a doc naming `crate::x` is not
/// an import).
fn strip(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            // A raw string's `r#"` also starts here; its end `"#` is found by
            // the same scan for the next unescaped quote.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal like 'x'
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The child module whose name, followed by `::`, starts at `i`.
fn child_at<'a>(code: &[char], i: usize, children: &'a [String]) -> Option<&'a String> {
    children.iter().find(|c| {
        let n = c.chars().count();
        code.len() > i + n + 1 && code[i..i + n].iter().copied().eq(c.chars()) && code[i + n] == ':' && code[i + n + 1] == ':'
    })
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the path tree that starts at `s` (after `crate::` or `super::`):
/// `a::b`, `a::{b, c::d}`, `{a, b}`. Returns the paths and where parsing
/// stopped.
fn parse_tree(s: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut prefix = Vec::new();
    loop {
        skip_ws(&mut i);
        if i < s.len() && s[i] == '{' {
            i += 1;
            let mut all = Vec::new();
            loop {
                skip_ws(&mut i);
                if i >= s.len() || s[i] == '}' {
                    i += 1;
                    break;
                }
                if s[i] == ',' {
                    i += 1;
                    continue;
                }
                let (paths, next) = parse_tree(s, i);
                if next == i {
                    i += 1; // `*`, `self` handled below, anything else skipped
                    continue;
                }
                i = next;
                for p in paths {
                    let mut full = prefix.clone();
                    full.extend(p);
                    all.push(full);
                }
            }
            return (all, i);
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if i == start {
            return (if prefix.is_empty() { vec![] } else { vec![prefix] }, i);
        }
        let seg: String = s[start..i].iter().collect();
        if seg != "self" {
            prefix.push(seg);
        }
        skip_ws(&mut i);
        if i + 1 < s.len() && s[i] == ':' && s[i + 1] == ':' {
            i += 2;
            continue;
        }
        return (vec![prefix], i);
    }
}

/// The modules that the file of module `m` names.
fn references(krate: &Crate, m: &ModPath) -> BTreeSet<ModPath> {
    let text = std::fs::read_to_string(krate.file_of(m)).unwrap();
    let code: Vec<char> = strip(&text).chars().collect();
    // `super` in a `mod.rs` is the folder's parent; in `a/b.rs` it is `a`.
    let parent: ModPath = m[..m.len().saturating_sub(1)].to_vec();
    let children: Vec<String> =
        krate.modules.iter().filter(|c| c.len() == m.len() + 1 && c.starts_with(m)).map(|c| c[m.len()].clone()).collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < code.len() {
        let preceded = i > 0 && (is_ident(code[i - 1]) || code[i - 1] == ':');
        let base = if preceded {
            None
        } else if code[i..].starts_with(&['c', 'r', 'a', 't', 'e', ':', ':']) {
            Some((Vec::new(), i + 7))
        } else if code[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
            let mut up = parent.clone();
            let mut j = i + 7;
            while code[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                up.pop();
                j += 7;
            }
            Some((up, j))
        } else if code[i..].starts_with(&['s', 'e', 'l', 'f', ':', ':']) {
            Some((m.clone(), i + 6))
        } else if let Some(child) = child_at(&code, i, &children) {
            // A bare path starting with a child module's name (`x::X` in
            // the module that declares `mod x;`).
            let _ = child;
            Some((m.clone(), i))
        } else {
            None
        };
        let Some((base, start)) = base else {
            i += 1;
            continue;
        };
        let (paths, end) = parse_tree(&code, start);
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            out.insert(krate.module_of(&full));
        }
        i = end.max(i + 1);
    }
    out.remove(m);
    out
}

/// Within folder `dir` (a module path), the part a module belongs to: the
/// folder's own `mod.rs` (`"mod"`), or the child file or subfolder it is in.
fn part_in(dir: &ModPath, m: &ModPath) -> Option<String> {
    if !m.starts_with(dir) {
        return None;
    }
    Some(m.get(dir.len()).cloned().unwrap_or_else(|| "mod".to_string()))
}

/// Cycles among the parts of every folder, as readable chains.
fn cycles(krate: &Crate) -> Vec<String> {
    let refs: BTreeMap<ModPath, BTreeSet<ModPath>> = krate.modules.iter().map(|m| (m.clone(), references(krate, m))).collect();
    let dirs: BTreeSet<ModPath> = krate.modules.iter().filter(|m| m.is_empty() || krate.file_of(m).ends_with("mod.rs")).cloned().collect();
    let mut found = Vec::new();
    for dir in &dirs {
        // part -> part -> a witness (from module, to module).
        let mut edges: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
        for (from, tos) in &refs {
            let Some(a) = part_in(dir, from) else { continue };
            for to in tos {
                let Some(b) = part_in(dir, to) else { continue };
                // `lib.rs` declares every module: the crate root's own arrows
                // are declarations, not uses.
                if a != b && !(dir.is_empty() && a == "mod") {
                    edges.entry(a.clone()).or_default().entry(b).or_insert_with(|| (show(from), show(to)));
                }
            }
        }
        for (a, outs) in &edges {
            for (b, (wf, wt)) in outs {
                if a < b {
                    if let Some(back) = path_between(&edges, b, a) {
                        found.push(format!(
                            "in {}: {a} -> {b} ({wf} names {wt}) and back: {}",
                            if dir.is_empty() { "src/".to_string() } else { format!("src/{}/", dir.join("/")) },
                            back.join(" -> ")
                        ));
                    }
                }
            }
        }
    }
    found
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

fn path_between(edges: &BTreeMap<String, BTreeMap<String, (String, String)>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap().clone();
        if last == to {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in edges.get(&last).map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            let mut p = path.clone();
            p.push(next);
            stack.push(p);
        }
    }
    None
}

#[test]
fn the_daemon_modules_depend_one_way() {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(krate.modules.len() > 10, "src/ was not read: {:?}", krate.modules);
    let found = cycles(&krate);
    assert!(found.is_empty(), "modules of src/ that reach each other (make one of the arrows go away):\n{}", found.join("\n"));
}

#[test]
fn the_reader_sees_grouped_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod x; pub use x::X; // crate::c::Nope\n").unwrap();
    std::fs::write(src.join("a/x.rs"), "use crate::{b::{self, B}, c};\nconst S: &str = \"crate::c::Q\";").unwrap();
    std::fs::write(src.join("b.rs"), "fn f() { let _ = super::a::X; }").unwrap();
    std::fs::write(src.join("c.rs"), "").unwrap();
    let krate = Crate::read(src);
    let names = |m: &[&str]| references(&krate, &m.iter().map(|s| s.to_string()).collect());
    assert_eq!(names(&["a", "x"]), [vec!["b".to_string()], vec!["c".to_string()]].into_iter().collect());
    assert_eq!(names(&["a"]), [vec!["a".to_string(), "x".to_string()]].into_iter().collect());
    let found = cycles(&krate);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("in src/: a -> b"), "{found:?}");
}

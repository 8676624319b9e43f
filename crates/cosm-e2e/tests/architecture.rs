//! The *Architecture Invariant* lines of ARCHITECTURE.md, kept by a test (in the spirit of
//! rust-analyzer's `xtask/src/tidy.rs`): prose that nothing checks drifts, so each invariant
//! below fails `cargo test` when code breaks it.
//!
//! 1. Only the appliance's `store` touches redb, so the schema and its transactions live in
//!    one place.
//! 2. Only the appliance's `http` knows axum, tower and tower-http; handlers stay thin and
//!    the application layer can be driven without HTTP.
//! 3. The appliance's top-level modules import each other without cycles, so the layers
//!    (http over app over store) stay layers.
//! 4. Protocol cores (netboot's `dhcp::core`, `dhcp::leases`, `ipxe`, `boot_arch`,
//!    `ra::packet`, `ra::schedule`) and the
//!    appliance's `lifecycle`, `rules` and `placement` do no I/O and read no clock: they are pure and
//!    tested with plain unit tests; the shells own sockets, files and time.
//! 5. Crate dependencies point one way: netboot, the agent and cosmctl never link the
//!    appliance, `cosm-wire` carries no server code, and `cosm-hypervisor` links no COSM
//!    crate but `cosm-wire`.
//!
//! The checks read source text, not a compiler's view: comments and string literals are
//! blanked first, then every path (`a::b::c`, with `use` groups expanded) is matched. Each
//! checker is a plain function over `(path, text)` pairs, and is itself tested on small
//! synthetic trees that break its rule, so we know every invariant can fail.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

type Files = [(String, String)];
type Toks = [(usize, String)];
type Paths = Vec<(usize, Vec<String>)>;

// ---- Reading source text ----------------------------------------------------------------

/// Blanks comments, string literals and char literals (newlines kept, so line numbers hold).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let ident = |k: usize| c[k].is_alphanumeric() || c[k] == '_';
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize, ch: char| c.get(k) == Some(&ch);
        // A raw string starts `r"`/`r#"` on its own or after a `b`/`c` prefix, not mid-word.
        let raw_ok =
            i == 0 || !ident(i - 1) || (matches!(c[i - 1], 'b' | 'c') && (i < 2 || !ident(i - 2)));
        let end = if at(i, '/') && at(i + 1, '/') {
            (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())
        } else if at(i, '/') && at(i + 1, '*') {
            let (mut j, mut depth) = (i + 2, 1);
            while j < c.len() && depth > 0 {
                if at(j, '/') && at(j + 1, '*') {
                    (depth, j) = (depth + 1, j + 2);
                } else if at(j, '*') && at(j + 1, '/') {
                    (depth, j) = (depth - 1, j + 2);
                } else {
                    j += 1;
                }
            }
            j
        } else if let Some(j) = raw_string_end(&c, i).filter(|_| raw_ok) {
            j
        } else if at(i, '"') {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if at(i, '\'') && at(i + 1, '\\') {
            (i + 3..c.len())
                .find(|&j| c[j] == '\'')
                .map_or(c.len(), |j| j + 1)
        } else if at(i, '\'') && at(i + 2, '\'') {
            i + 3 // `'x'`, including `'"'`; anything else after `'` is a lifetime or label
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        let end = end.min(c.len());
        out.extend(
            c[i..end]
                .iter()
                .map(|&ch| if ch == '\n' { '\n' } else { ' ' }),
        );
        i = end;
    }
    out
}

/// The end of a raw string `r#"…"#` starting at `i`, if one starts there (not `r#ident`).
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
    if c[i] != 'r' || c.get(i + 1 + hashes) != Some(&'"') {
        return None;
    }
    let close: Vec<char> = std::iter::once('"').chain(vec!['#'; hashes]).collect();
    let end = (i + 2 + hashes..c.len()).find(|&j| c[j..].starts_with(&close));
    Some(end.map_or(c.len(), |j| j + close.len()))
}

fn is_ident(t: &str) -> bool {
    t.starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$')
}

/// Tokens of stripped code as `(line, text)`: identifiers (`$crate` is one), `::`, or one
/// punctuation character. With `skip_tests`, `#[cfg(test)] mod … { … }` blocks are dropped.
fn tokens(src: &str, skip_tests: bool) -> Vec<(usize, String)> {
    let code = strip(src);
    let mut toks: Vec<(usize, String)> = Vec::new();
    let (mut line, mut chars) = (1, code.chars().peekable());
    while let Some(ch) = chars.next() {
        if ch == '\n' {
            line += 1;
        } else if is_ident(&ch.to_string()) {
            let mut word = ch.to_string();
            while let Some(&n) = chars.peek().filter(|&&n| n.is_alphanumeric() || n == '_') {
                word.push(n);
                chars.next();
            }
            toks.push((line, word));
        } else if ch == ':' && chars.peek() == Some(&':') {
            chars.next();
            toks.push((line, "::".into()));
        } else if !ch.is_whitespace() {
            toks.push((line, ch.to_string()));
        }
    }
    if skip_tests {
        let mut k = 0;
        while k < toks.len() {
            match test_module_end(&toks, k) {
                Some(end) => drop(toks.drain(k..=end)),
                None => k += 1,
            }
        }
    }
    toks
}

/// If a `#[cfg(test)] mod name { … }` starts at token `k`, the index of its closing brace.
fn test_module_end(toks: &Toks, k: usize) -> Option<usize> {
    let text = |j: usize| toks.get(j).map_or("", |t| t.1.as_str());
    if (k..k + 7).map(text).collect::<String>() != "#[cfg(test)]" {
        return None;
    }
    let mut m = k + 7;
    while matches!(text(m), "pub" | "(" | "crate" | ")") {
        m += 1;
    }
    if text(m) != "mod" || text(m + 2) != "{" {
        return None;
    }
    let mut depth = 0;
    let close = (m + 2..toks.len()).find(|&j| {
        depth += i32::from(text(j) == "{") - i32::from(text(j) == "}");
        depth == 0
    });
    Some(close.unwrap_or(toks.len() - 1))
}

/// Every path in the code with its line: `use a::{b, c::{d, self}}` gives a::b, a::c::d, a::c.
fn paths(src: &str, skip_tests: bool) -> Paths {
    let toks = tokens(src, skip_tests);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if is_ident(&toks[i].1) || toks[i].1 == "::" {
            i = path_tree(&toks, i, &[], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

fn path_tree(t: &Toks, mut i: usize, prefix: &[String], out: &mut Paths) -> usize {
    let line = t[i].0;
    let mut segs = prefix.to_vec();
    if t[i].1 == "::" {
        i += 1; // `::std::fs`
    }
    while let Some((_, s)) = t.get(i) {
        if s == "{" && !segs.is_empty() {
            i += 1;
            while i < t.len() && t[i].1 != "}" {
                if t[i].1 == "as" {
                    i += 2; // `X as Y`: Y is a local alias, not a path
                } else if is_ident(&t[i].1) {
                    i = path_tree(t, i, &segs, out);
                } else {
                    i += 1; // `,` or `*`
                }
            }
            return i + 1;
        }
        if !is_ident(s) {
            break;
        }
        if s != "self" || segs.is_empty() {
            segs.push(s.clone());
        }
        i += 1;
        if t.get(i).map(|x| x.1.as_str()) != Some("::") {
            break;
        }
        i += 1;
    }
    if !segs.is_empty() {
        out.push((line, segs));
    }
    i
}

/// Whether `pattern` (`"a::b"`) occurs as consecutive segments of the path.
fn mentions(segs: &[String], pattern: &str) -> bool {
    let p: Vec<&str> = pattern.split("::").collect();
    segs.windows(p.len())
        .any(|w| w.iter().zip(&p).all(|(a, b)| a == b))
}

/// The part of a path after its `src/` directory.
fn in_src(path: &str) -> &str {
    path.strip_prefix("src/")
        .or_else(|| path.split_once("/src/").map(|(_, r)| r))
        .unwrap_or(path)
}

/// Whether `rel` (relative to `src/`) is module `name`, as `name.rs` or a folder `name/`.
fn is_under(rel: &str, name: &str) -> bool {
    rel == format!("{name}.rs") || rel.starts_with(&format!("{name}/"))
}

// ---- The checkers -----------------------------------------------------------------------

/// In every file `select` picks, the first line mentioning one of the space-separated
/// `patterns` (and how many more lines do).
fn scan(files: &Files, patterns: &str, select: fn(&str) -> bool, tests: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files.iter().filter(|(p, _)| select(in_src(p))) {
        let hits: Vec<_> = paths(text, tests)
            .into_iter()
            .filter(|(_, s)| patterns.split_whitespace().any(|p| mentions(s, p)))
            .collect();
        if let Some((line, segs)) = hits.first() {
            let lines = hits.iter().map(|h| h.0).collect::<BTreeSet<_>>().len();
            let plural = if lines > 2 { "s" } else { "" };
            let more = match lines {
                1 => String::new(),
                n => format!(" (and {} more line{plural})", n - 1),
            };
            found.push(format!("    {path}:{line}: `{}`{more}", segs.join("::")));
        }
    }
    found
}

/// A module is the first component under `src/`; `lib.rs` and `main.rs` are not modules.
fn module_of(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    (rel != "lib.rs" && rel != "main.rs").then(|| first.trim_end_matches(".rs").to_string())
}

/// The import cycles between modules, one shortest cycle through each module that has one,
/// each edge with its first `crate::` path (file:line).
fn import_cycles(files: &Files) -> Vec<String> {
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(p, _)| module_of(in_src(p)))
        .collect();
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for (path, text) in files {
        let Some(from) = module_of(in_src(path)) else {
            continue;
        };
        for (line, segs) in paths(text, false) {
            if segs.len() > 1 && segs[0] == "crate" && segs[1] != from && modules.contains(&segs[1])
            {
                edges
                    .entry((from.clone(), segs[1].clone()))
                    .or_insert(format!("{path}:{line}"));
            }
        }
    }
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        graph.entry(a).or_default().push(b);
    }
    let mut cycles = BTreeSet::new();
    for start in modules.iter().map(String::as_str) {
        // Breadth-first from `start` until an edge leads back to it: its shortest cycle.
        let (mut parent, mut queue) = (BTreeMap::new(), VecDeque::from([start]));
        'search: while let Some(n) = queue.pop_front() {
            for &m in graph.get(n).into_iter().flatten() {
                if m == start {
                    let mut cycle = vec![n];
                    while cycle.last() != Some(&start) {
                        cycle.push(parent[cycle.last().unwrap()]);
                    }
                    cycle.reverse();
                    let min = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap();
                    cycle.rotate_left(min);
                    cycles.insert(cycle);
                    break 'search;
                }
                if m != start && !parent.contains_key(m) {
                    parent.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
    }
    let mut report = Vec::new();
    for cycle in cycles {
        let ring: Vec<&str> = cycle.iter().chain(&cycle[..1]).copied().collect();
        report.push(format!("    {}", ring.join(" → ")));
        for w in ring.windows(2) {
            let at = &edges[&(w[0].to_string(), w[1].to_string())];
            report.push(format!("        {} → {}: {at}", w[0], w[1]));
        }
    }
    report
}

/// `[dependencies]` (and `[target.….dependencies]`) keys of a Cargo.toml, with their lines.
fn dependencies(manifest: &str) -> Vec<(usize, String)> {
    let (mut section, mut out) = (String::new(), Vec::new());
    for (n, line) in manifest.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix('[') {
            section = header.trim_end_matches(']').trim().to_string();
            if let Some((_, name)) = section
                .split_once("dependencies.")
                .filter(|_| !section.contains("-dependencies"))
            {
                out.push((n + 1, name.to_string())); // `[dependencies.redb]`
            }
        } else if section == "dependencies" || section.ends_with(".dependencies") {
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim().trim_matches('"');
                out.push((n + 1, key.split('.').next().unwrap_or(key).to_string()));
            }
        }
    }
    out
}

/// The lines of a Cargo.toml that depend on one of the space-separated `forbidden` crates.
fn forbidden_deps(path: &str, manifest: &str, forbidden: &str) -> Vec<String> {
    let deps = dependencies(manifest).into_iter();
    let bad = deps.filter(|(_, d)| forbidden.split_whitespace().any(|f| f == d));
    bad.map(|(line, d)| format!("    {path}:{line}: depends on `{d}`"))
        .collect()
}

// ---- The invariants on the real tree ----------------------------------------------------

const APPLIANCE: &str = "crates/cosm-appliance/src";
const REDB: &str = "redb";
const HTTP: &str = "axum tower tower_http";
const IO: &str = "UdpSocket TcpStream TcpListener socket2 tokio::net tokio::fs tokio::io std::fs \
                  std::process io::Read io::Write SystemTime::now Instant::now";
const NETBOOT_CORES: &[&str] = &[
    "dhcp/core.rs",
    "dhcp/leases.rs",
    "ipxe.rs",
    "boot_arch.rs",
    "ra/packet.rs",
    "ra/schedule.rs",
];

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir` (relative to the workspace root), paths relative to the root.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, label: &str, out: &mut Vec<(String, String)>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {label}: {e}"));
        for entry in entries.map(Result::unwrap) {
            let name = format!("{label}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &name, out);
            } else if name.ends_with(".rs") {
                out.push((name, std::fs::read_to_string(entry.path()).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), dir, &mut out);
    out.sort();
    out
}

fn verdict(rule: &str, violations: Vec<String>, instead: &str) {
    let list = violations.join("\n");
    assert!(
        violations.is_empty(),
        "\nArchitecture invariant broken: {rule}\n{list}\nInstead: {instead}\n"
    );
}

/// `lifecycle`, `rules` and `placement`, wherever they live under `src/` (tests excepted).
fn is_pure_module(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').map(|p| p.trim_end_matches(".rs")).collect();
    !parts.contains(&"tests")
        && parts
            .iter()
            .any(|p| matches!(*p, "lifecycle" | "rules" | "placement"))
}

#[test]
fn only_the_store_touches_redb() {
    let found = scan(
        &sources(APPLIANCE),
        REDB,
        |rel| !is_under(rel, "store"),
        false,
    );
    verdict(
        "only `store` touches redb; these appliance files outside src/store/ use it:",
        found,
        "add a store command or query in src/store/ and call that; return store types, not redb's.",
    );
}

#[test]
fn only_http_knows_axum() {
    let found = scan(
        &sources(APPLIANCE),
        HTTP,
        |rel| !is_under(rel, "http"),
        false,
    );
    verdict(
        "only `http` knows axum, tower and tower-http; these files outside src/http/ use them:",
        found,
        "move routes, handlers, extractors and middleware into src/http/ and have them call the \
         application layer with plain types; main.rs calls a function that http/ provides.",
    );
}

#[test]
fn appliance_modules_import_without_cycles() {
    verdict(
        "the appliance's modules import each other without cycles; these modules form cycles:",
        import_cycles(&sources(APPLIANCE)),
        "move what both sides need into the lower module (or a new one both import), so imports \
         point one way: http → app → store.",
    );
}

#[test]
fn protocol_cores_do_no_io() {
    let netboot = sources("crates/cosm-netboot/src");
    let mut found = scan(&netboot, IO, |rel| NETBOOT_CORES.contains(&rel), true);
    for core in NETBOOT_CORES {
        if !netboot.iter().any(|(p, _)| in_src(p) == *core) {
            found.push(format!(
                "    crates/cosm-netboot/src/{core}: missing; if it moved, update NETBOOT_CORES"
            ));
        }
    }
    let appliance = sources(APPLIANCE);
    if !appliance.iter().any(|(p, _)| is_pure_module(in_src(p))) {
        found.push(format!(
            "    {APPLIANCE}: no lifecycle or rules module; update is_pure_module"
        ));
    }
    found.extend(scan(
        &appliance,
        &format!("{IO} tokio"),
        is_pure_module,
        true,
    ));
    verdict(
        "protocol cores and `lifecycle`/`rules` do no I/O and read no clock; these do:",
        found,
        "take `now`, bytes or records as parameters and return a decision; the shells \
         (dhcp::server, tftp, the store, the tokio tasks) do the socket, file and clock work.",
    );
}

#[test]
fn crate_dependencies_point_one_way() {
    let rules = [
        ("crates/cosm-netboot/Cargo.toml", "cosm-appliance"),
        (
            "crates/cosm-wire/Cargo.toml",
            "axum tokio redb reqwest tower tower-http hyper",
        ),
        ("crates/cosmctl/Cargo.toml", "cosm-appliance"),
        (
            "crates/cosm-agent/Cargo.toml",
            "cosm-appliance cosm-netboot cosm-kickstart",
        ),
        (
            "crates/cosm-hypervisor/Cargo.toml",
            "cosm-appliance cosm-agent cosm-netboot cosm-kickstart cosm-e2e cosmctl",
        ),
        (
            "crates/cosm-power/Cargo.toml",
            "cosm-appliance cosm-agent cosm-netboot cosm-kickstart cosm-e2e cosmctl cosm-hypervisor",
        ),
    ];
    let mut found = Vec::new();
    for (path, forbidden) in rules {
        let text =
            std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        found.extend(forbidden_deps(path, &text, forbidden));
    }
    verdict(
        "netboot, the agent and cosmctl never link the appliance; cosm-wire has no server code; \
         cosm-hypervisor and cosm-power link only cosm-wire:",
        found,
        "share types through cosm-wire, and reach the appliance through its HTTP API or through a \
         trait the appliance implements (netboot's `LeaseSink`).",
    );
}

// ---- The checkers can fail: each rule on a synthetic tree that breaks it -----------------

fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

#[test]
fn self_test_comments_and_literals_do_not_count() {
    let src = r##"//! Uses redb, see redb::Database.
/* block /* nested redb:: */ still a comment: redb */
const S: &str = "redb::Database \" still the string";
const R: &str = r#"a "quoted" redb::X"#;
fn f<'a>(x: &'a str) -> char { let _ = (b"redb", br"redb", b'"'); '"' }
use redb::Table; // reported, on line 6
"##;
    let found = scan(&tree(&[("src/api.rs", src)]), REDB, |_| true, false);
    assert_eq!(found, ["    src/api.rs:6: `redb::Table`"]);
}

#[test]
fn self_test_redb_only_in_store() {
    let files = tree(&[
        ("src/store.rs", "use redb::Database;"),
        (
            "src/store/tables.rs",
            "const T: redb::TableDefinition<u8, u8> = x();",
        ),
        (
            "src/app/machines.rs",
            "fn f() {}\nfn g(db: &redb::Database) {}\nuse redb as db;",
        ),
    ]);
    let found = scan(&files, REDB, |rel| !is_under(rel, "store"), false);
    assert_eq!(
        found,
        ["    src/app/machines.rs:2: `redb::Database` (and 1 more line)"]
    );
}

#[test]
fn self_test_axum_only_in_http() {
    let files = tree(&[
        ("src/http/x.rs", "use axum::Router; use tower::ServiceExt;"),
        ("src/app/y.rs", "fn r() -> axum::Router { todo!() }"),
        ("src/main.rs", "use tower_http::{trace::TraceLayer, limit};"),
        (
            "src/app/tower_of_hanoi.rs",
            "struct Tower; fn t() -> Tower { Tower }",
        ),
    ]);
    let found = scan(&files, HTTP, |rel| !is_under(rel, "http"), false);
    let expected = [
        "    src/app/y.rs:1: `axum::Router`",
        "    src/main.rs:1: `tower_http::trace::TraceLayer`",
    ];
    assert_eq!(found, expected);
}

#[test]
fn self_test_import_cycle_is_named() {
    let files = tree(&[
        ("src/lib.rs", "pub mod a; pub mod b; use crate::a::X;"),
        ("src/a.rs", "use crate::b;\npub(crate) struct X;"),
        (
            "src/b/mod.rs",
            "use crate::{\n    c::Y,\n    a::{self, X},\n};",
        ),
        (
            "src/c.rs",
            "macro_rules! m { () => { $crate::a::X } }\nfn f() { crate::b::g(); }",
        ),
    ]);
    let expected = [
        "    a → b → a",
        "        a → b: src/a.rs:1",
        "        b → a: src/b/mod.rs:3",
        "    b → c → b",
        "        b → c: src/b/mod.rs:2",
        "        c → b: src/c.rs:2",
    ];
    assert_eq!(import_cycles(&files), expected);
    let acyclic = tree(&[
        ("src/a.rs", "use crate::b::{self, Z};"),
        ("src/b.rs", "use super::*;"),
    ]);
    assert!(import_cycles(&acyclic).is_empty());
}

#[test]
fn self_test_cores_do_no_io() {
    let core =
        "use std::fmt::Write;\nfn decide(now: u64) {}\nfn bad() { std::time::Instant::now(); }\n\
                #[cfg(test)]\nmod tests {\n    fn t() { std::fs::read(\"x\"); }\n}\n";
    let files = tree(&[
        ("src/ipxe.rs", core),
        (
            "src/dhcp/core.rs",
            "#[cfg(test)]\nmod tests { use std::net::UdpSocket; }",
        ),
        ("src/app/lifecycle.rs", "use std::io::{self, Read};"),
        ("src/store/rules.rs", "fn f() { tokio::spawn(async {}); }"),
        ("src/store/rules/tests.rs", "use std::fs;"),
    ]);
    let netboot = scan(&files, IO, |rel| NETBOOT_CORES.contains(&rel), true);
    assert_eq!(netboot, ["    src/ipxe.rs:3: `std::time::Instant::now`"]);
    let appliance = scan(&files, &format!("{IO} tokio"), is_pure_module, true);
    let expected = [
        "    src/app/lifecycle.rs:1: `std::io::Read`",
        "    src/store/rules.rs:1: `tokio::spawn`",
    ];
    assert_eq!(appliance, expected);
}

#[test]
fn self_test_forbidden_dependencies() {
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\nserde = { workspace = true }\n\
                    axum.workspace = true\n\n[dependencies.redb]\nversion = \"2\"\n\n\
                    [dev-dependencies]\ntokio = \"1\"\n";
    let found = forbidden_deps("Cargo.toml", manifest, "axum redb tokio");
    assert_eq!(
        found,
        [
            "    Cargo.toml:6: depends on `axum`",
            "    Cargo.toml:8: depends on `redb`"
        ]
    );
}

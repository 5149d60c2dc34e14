//! The layering of the `sark` crate, checked from the code's own imports (docs/ARCHITECTURE.md,
//! "Layers"): every `crate::…` and `super::…` path of every file under `src/` is an edge
//! from that file's module to the module it names. The rules:
//!
//! - edges point down: main/cli → lib → node (assembly), http (adapter), admin → services
//!   (auth, federation, users, policies, servers) → core → base (error, store, idp, policy, secrets,
//!   hashing_keys, config, siem, limits, tls, telemetry, request_log);
//! - within a layer, node and http do not name each other, and route modules do not name
//!   each other;
//! - no module outside `src/http` names axum, `ApiError` or an HTTP server status;
//! - the file graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of a module path (`auth::service`, `http::routes::users`, …); higher layers
/// may name lower ones only.
fn layer(module: &str) -> u8 {
    let top = module.split("::").next().unwrap_or_default();
    match top {
        "main" | "cli" => 6,
        "lib" => 5,
        "node" | "http" | "admin" => 4,
        "auth" | "federation" | "policies" | "servers" | "users" => 3,
        "core" => 2,
        "layering" => 0,
        _ => 1,
    }
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The module path of a file: `src/auth/service.rs` → `auth::service`, `src/auth.rs` →
/// `auth`, `src/lib.rs` → `lib`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("::")
}

/// The text without comments (line comments and doc comments) and string literals, so that
/// paths named in prose or messages are not taken for imports.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '/' if chars.peek() == Some(&'/') => {
                for rest in chars.by_ref() {
                    if rest == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            // A char literal holding a quote must not open a string.
            '\'' if chars.peek() == Some(&'"') => {
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// `prefix{a::b, c::{d, e}}` expanded into `prefix a::b`, `prefix c::d`, `prefix c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.trim().to_owned()];
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(&format!("{prefix}{}", p.trim())))
        .collect()
}

/// The module paths a file names, resolved against the modules that exist.
fn imports(module: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut named = Vec::new();
    // `use` statements, braces expanded.
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(rest) = statement
            .strip_prefix("pub(crate) use ")
            .or_else(|| statement.strip_prefix("pub use "))
            .or_else(|| statement.strip_prefix("use "))
        else {
            continue;
        };
        named.extend(expand(&rest.split_whitespace().collect::<String>()));
    }
    // Paths written inline.
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            let preceded =
                begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
            let end = code[begin..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| begin + e);
            if !preceded {
                named.push(code[begin..end].to_owned());
            }
            from = end.max(begin + start.len());
        }
    }
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_owned())
    };
    // A file's own module for `super::` is its parent (`auth::forward` → `auth`); the crate
    // root's files (`lib`, `auth`) have the crate as parent.
    let own_parent = parent(module);
    let mut resolved = BTreeSet::new();
    for path in named {
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let absolute: Vec<String> = match segments.first() {
            Some(&"crate") => segments[1..].iter().map(|s| s.to_string()).collect(),
            Some(&"super") => {
                let mut base = own_parent.clone();
                let mut rest = &segments[1..];
                while rest.first() == Some(&"super") {
                    base = parent(&base);
                    rest = &rest[1..];
                }
                base.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .chain(rest.iter().map(|s| s.to_string()))
                    .collect()
            }
            _ => continue,
        };
        // The longest prefix that is a module (`core::Core` → `core`).
        let found = (1..=absolute.len())
            .rev()
            .map(|n| absolute[..n].join("::"))
            .find(|candidate| modules.contains(candidate));
        if let Some(target) = found
            && target != module
        {
            resolved.insert(target);
        }
    }
    resolved
}

/// The import graph of `src/`: module → the modules it names.
fn graph() -> BTreeMap<String, (BTreeSet<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = files(&src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    files
        .iter()
        .map(|file| {
            let module = module_of(&src, file);
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
            let code = code_only(&text);
            (module.clone(), (imports(&module, &code, &modules), code))
        })
        .collect()
}

/// Whether `from` may name `to`.
fn allowed(from: &str, to: &str) -> bool {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let (from_top, to_top) = (top(from), top(to));
    // A module and its own submodules (a parent declares its children).
    if from_top == to_top {
        // Route modules do not name each other.
        let route = |m: &str| m.starts_with("http::routes::");
        return !(route(from) && route(to));
    }
    // `lib` and `auth`/`federation` are parents of their files: `auth` → `auth::x` above.
    // The break-glass commands assemble what they need of a node.
    if from_top == "admin" && to_top == "node" {
        return true;
    }
    let (from_layer, to_layer) = (layer(from), layer(to));
    // Within the base and the services, any direction the cycle check allows, except that
    // the authentication service never names the identity providers.
    from_layer > to_layer
        || (from_layer == to_layer && (from_layer == 1 || from_layer == 3))
            && !(from_top == "auth" && to_top == "federation")
}

#[test]
fn imports_point_down_the_layers() {
    let graph = graph();
    let mut forbidden = Vec::new();
    for (module, (targets, _)) in &graph {
        for target in targets {
            if !allowed(module, target) {
                forbidden.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(
        forbidden.is_empty(),
        "edges against the layering:\n{}",
        forbidden.join("\n")
    );
}

#[test]
fn only_the_front_door_knows_http() {
    let mut found = Vec::new();
    for (module, (_, code)) in graph() {
        // The SIEM sinks are HTTP clients: their status codes are reqwest's.
        let client = module == "siem" || module.starts_with("siem::");
        if module == "http" || module.starts_with("http::") || module == "layering" {
            continue;
        }
        for word in ["axum", "ApiError", "StatusCode"] {
            if code.contains(word) && !(client && word == "StatusCode") {
                found.push(format!("{module} names {word}"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Parents name their children (`mod x;`); only edges between unrelated files count.
    let related =
        |a: &str, b: &str| a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"));
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, (BTreeSet<String>, String)>,
        related: &dyn Fn(&str, &str) -> bool,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(module) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|m| *m == module).unwrap_or(0);
                let mut cycle: Vec<String> = stack[from..].iter().map(|m| m.to_string()).collect();
                cycle.push(module.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(module, 1);
        stack.push(module);
        if let Some((targets, _)) = graph.get(module) {
            for target in targets {
                if related(module, target) {
                    continue;
                }
                if let Some((key, _)) = graph.get_key_value(target.as_str())
                    && let Some(cycle) = visit(key, graph, related, state, stack)
                {
                    return Some(cycle);
                }
            }
        }
        stack.pop();
        state.insert(module, 2);
        None
    }
    for module in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(module, &graph, &related, &mut state, &mut stack) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_edges_and_cycles() {
    let modules: BTreeSet<String> = ["auth", "auth::service", "core", "http", "http::errors"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let code = code_only(
        "use crate::{core::Core, http::errors::ApiError};\n// crate::auth::service in prose\nlet s = \"crate::auth\";\nsuper::service::f();",
    );
    let found = imports("auth::principal", &code, &modules);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["auth::service", "core", "http::errors"]
    );
    assert!(!allowed("auth::principal", "http::errors"));
    assert!(allowed("http::routes::users", "auth::service"));
    assert!(!allowed("http::routes::users", "http::routes::auth"));
    assert!(!allowed("core", "auth::service"));
    assert!(!allowed("node", "http::forward"));
}

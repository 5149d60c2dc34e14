//! What a bundle's source does, read from its syntax tree: the builtins it calls and the
//! parts of the input it reads. Uploads are refused for builtins that reach outside the
//! process, and only bundles whose answers depend on the input alone are cached.

use serde_json::Value;

/// Builtins that reach outside SARK's process or into its runtime: refused at upload.
pub const FORBIDDEN_BUILTINS: &[&str] = &[
    "http.send",
    "net.lookup_ip_addr",
    "opa.runtime",
    "rego.metadata.chain",
    "rego.metadata.rule",
];

/// Builtins whose answer can differ between two identical calls.
const NONDETERMINISTIC_BUILTINS: &[&str] = &["time.now_ns", "rand.intn", "uuid.rfc4122"];

/// Context fields that differ from one request, or one node, to the next.
pub const VOLATILE_CONTEXT: &[&str] = &["time", "node_id"];

/// What matters about a bundle for caching its decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BundleTraits {
    /// It reads `input.context.time` or `input.context.node_id`, or reads the input in a
    /// way that may reach them (`input[x]`, the whole `input` or `input.context`).
    pub reads_volatile_context: bool,
    /// It calls a builtin whose answer can change between identical calls.
    pub nondeterministic: bool,
}

impl BundleTraits {
    /// Whether its decisions depend only on the input without the volatile context
    /// fields, so they may be cached under that input.
    pub fn cacheable(&self) -> bool {
        !self.reads_volatile_context && !self.nondeterministic
    }
}

/// Reads the traits of the modules in `ast` (regorus' `get_ast_as_json`), or names the
/// first forbidden builtin called and its line.
pub fn analyze(ast: &Value) -> Result<BundleTraits, String> {
    let mut traits = BundleTraits::default();
    walk(ast, &mut traits)?;
    Ok(traits)
}

fn walk(node: &Value, traits: &mut BundleTraits) -> Result<(), String> {
    match node {
        Value::Array(items) => items.iter().try_for_each(|item| walk(item, traits)),
        Value::Object(map) => {
            if let Some(call) = map.get("Call") {
                let name = ref_name(&call["fcn"]);
                if let Some(name) = &name {
                    if FORBIDDEN_BUILTINS.contains(&name.as_str()) {
                        let line = call["span"]["line"].as_u64().unwrap_or(0);
                        return Err(format!(
                            "line {line}: `{name}` reaches outside SARK and is not allowed in a policy"
                        ));
                    }
                    if NONDETERMINISTIC_BUILTINS.contains(&name.as_str()) {
                        traits.nondeterministic = true;
                    }
                }
                // The callee is a name, not a read of the input; the arguments may be.
                return walk(&call["params"], traits);
            }
            if let Some(path) = input_path(node) {
                if reaches_volatile(&path) {
                    traits.reads_volatile_context = true;
                }
                return Ok(());
            }
            if is_input_var(node) {
                // The whole input, or an index into it: it may reach anything.
                traits.reads_volatile_context = true;
                return Ok(());
            }
            map.values().try_for_each(|value| walk(value, traits))
        }
        _ => Ok(()),
    }
}

fn is_input_var(node: &Value) -> bool {
    node.get("Var")
        .and_then(|var| var["value"].as_str())
        .is_some_and(|name| name == "input")
}

/// The dotted name of a reference made only of `Var` and `RefDot` (e.g. `http.send`).
fn ref_name(node: &Value) -> Option<String> {
    if let Some(var) = node.get("Var") {
        return var["value"].as_str().map(str::to_owned);
    }
    let dot = node.get("RefDot")?;
    let field = dot["field"].get(1)?.as_str()?;
    Some(format!("{}.{field}", ref_name(&dot["refr"])?))
}

/// For `input.a.b…` written with dots: the fields after `input`.
fn input_path(node: &Value) -> Option<Vec<String>> {
    let dot = node.get("RefDot")?;
    let field = dot["field"].get(1)?.as_str()?.to_owned();
    let refr = &dot["refr"];
    let mut path = if is_input_var(refr) {
        Vec::new()
    } else {
        input_path(refr)?
    };
    path.push(field);
    Some(path)
}

/// Whether reading `input.<path>` may read a volatile context field.
fn reaches_volatile(path: &[String]) -> bool {
    match path {
        [first, ..] if first != "context" => false,
        [_, field, ..] => VOLATILE_CONTEXT.contains(&field.as_str()),
        // `input.context` as a whole.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits(source: &str) -> Result<BundleTraits, String> {
        let mut engine = regorus::Engine::new();
        engine.add_policy("p.rego".into(), source.into()).unwrap();
        let ast: Value = serde_json::from_str(&engine.get_ast_as_json().unwrap()).unwrap();
        analyze(&ast)
    }

    #[test]
    fn builtins_that_reach_outside_are_named_with_their_line() {
        for (builtin, call) in [
            (
                "http.send",
                "http.send({\"method\": \"get\", \"url\": \"http://x\"})",
            ),
            ("net.lookup_ip_addr", "net.lookup_ip_addr(\"example.org\")"),
            ("opa.runtime", "opa.runtime()"),
        ] {
            let source = format!("package p\n\nallow if {{\n  x := {call}\n  x\n}}\n");
            let err = traits(&source).unwrap_err();
            assert!(err.contains(builtin) && err.contains("line 4"), "{err}");
        }
        let pure = "package p\nallow if net.cidr_contains(\"10.0.0.0/8\", input.ip)\n";
        assert_eq!(traits(pure).unwrap(), BundleTraits::default());
    }

    #[test]
    fn reading_the_volatile_context_or_calling_the_clock_is_seen() {
        let cases = [
            ("allow if input.user.role == \"admin\"", true),
            ("allow if input.context.ip == \"10.0.0.1\"", true),
            (
                "allow if time.parse_rfc3339_ns(input.context.time) > 0",
                false,
            ),
            ("allow if input.context.node_id == \"n1\"", false),
            ("allow if input.context[\"time\"]", false),
            ("allow if count(input) > 0", false),
            ("allow if { some k; input[k] }", false),
            ("allow if time.now_ns() > 0", false),
            ("allow if { x := input.context; x.time }", false),
        ];
        for (rule, cacheable) in cases {
            let source = format!("package p\n{rule}\n");
            assert_eq!(traits(&source).unwrap().cacheable(), cacheable, "{rule}");
        }
    }
}

//! The built-in Rego bundles of `policies/`, embedded in the binary and seeded as version 1
//! of their bundle on first start. Compilation and evaluation live in
//! `sark_actors::policy`, next to the PolicyActors that hold the compiled bundles.

pub mod safety;

/// The built-in bundles: `(bundle name, Rego source)`.
pub const BUILTIN_POLICIES: &[(&str, &str)] = &[
    (
        "authorization",
        include_str!("../policies/authorization/authorization.rego"),
    ),
    (
        "rate_limiting",
        include_str!("../policies/rate_limiting/rate_limiting.rego"),
    ),
];

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rego` file under `policies/`, grouped by directory.
    fn bundles() -> Vec<(PathBuf, Vec<PathBuf>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let mut out = Vec::new();
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "rego"))
                .collect();
            files.sort();
            out.push((dir, files));
        }
        out.sort();
        out
    }

    /// Names of the `test_*` rules defined in a Rego source.
    fn test_rules(source: &str) -> Vec<String> {
        let mut names: Vec<String> = source
            .lines()
            .filter(|l| l.starts_with("test_"))
            .map(|l| {
                l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        names.dedup();
        names
    }

    #[test]
    fn every_policy_test_in_policies_passes() {
        let mut ran = 0;
        let mut failures = Vec::new();
        for (dir, files) in bundles() {
            let mut engine = regorus::Engine::new();
            let mut tests = Vec::new();
            for file in &files {
                let source = std::fs::read_to_string(file).unwrap();
                let package = engine
                    .add_policy(file.display().to_string(), source.clone())
                    .unwrap_or_else(|e| panic!("{} does not compile: {e}", file.display()));
                let is_test = file
                    .file_stem()
                    .is_some_and(|s| s.to_string_lossy().ends_with("_test"));
                assert!(
                    is_test || test_rules(&source).is_empty(),
                    "{} defines tests but is not a *_test.rego file",
                    file.display()
                );
                if is_test {
                    tests.extend(
                        test_rules(&source)
                            .into_iter()
                            .map(|name| format!("{package}.{name}")),
                    );
                }
            }
            assert!(
                !tests.is_empty(),
                "{} has no *_test.rego with test_ rules",
                dir.display()
            );
            for rule in tests {
                ran += 1;
                let value = engine
                    .eval_rule(rule.clone())
                    .unwrap_or_else(|e| panic!("{rule}: {e}"));
                if value != regorus::Value::from(true) {
                    failures.push(format!("{rule} is {value:?}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "failing policy tests:\n{}",
            failures.join("\n")
        );
        assert!(ran >= 10, "only {ran} policy tests ran");
    }

    #[test]
    fn every_policy_directory_is_embedded() {
        let embedded: Vec<&str> = super::BUILTIN_POLICIES
            .iter()
            .map(|(name, _)| *name)
            .collect();
        let on_disk: Vec<String> = bundles()
            .iter()
            .map(|(dir, _)| dir.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(embedded, on_disk);
    }
}

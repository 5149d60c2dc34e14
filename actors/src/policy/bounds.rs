//! Bounds a Rego source is held to before it is compiled.
//!
//! regorus compiles nested collection literals in time that doubles with each level
//! (`[[[…]]]` 16 deep: seconds; 20 deep: half a minute), and nothing can stop a compile
//! once it runs. So the source is read first, without compiling it: its size, how deep its
//! brackets nest, how much nesting it holds in all (each bracket costs 2^depth, the shape of
//! the compile's cost), and how long each string literal is. A source past any of these is
//! refused with the limit it broke, before regorus sees it.

use super::PolicyError;

/// Largest source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;
/// Deepest nesting of `(`, `[` and `{`.
pub const MAX_NESTING: usize = 12;
/// Most nesting in all: the sum of 2^depth over every opening bracket. A chain 12 deep
/// costs 8,190; the built-in bundles cost a few hundred.
pub const MAX_NESTING_COST: u64 = 1 << 16;
/// Longest string literal, in bytes.
pub const MAX_STRING_BYTES: usize = 16 * 1024;

/// Refuses a source past any bound, naming the bound and where it was broken.
pub fn check(source: &str) -> Result<(), PolicyError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(PolicyError::Invalid(format!(
            "the source is {} bytes, above the limit of {MAX_SOURCE_BYTES}",
            source.len()
        )));
    }
    let mut depth = 0usize;
    let mut cost = 0u64;
    let mut line = 1usize;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '"' | '`' => {
                let started = line;
                let length = skip_string(&mut chars, c, &mut line);
                if length > MAX_STRING_BYTES {
                    return Err(PolicyError::Invalid(format!(
                        "line {started}: a string literal of {length} bytes, above the limit of {MAX_STRING_BYTES}"
                    )));
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(PolicyError::Invalid(format!(
                        "line {line}: brackets nest deeper than the limit of {MAX_NESTING} levels"
                    )));
                }
                cost = cost.saturating_add(1 << depth);
                if cost > MAX_NESTING_COST {
                    return Err(PolicyError::Invalid(format!(
                        "line {line}: the source nests more in all than the limit allows (each bracket costs 2^depth; the limit is {MAX_NESTING_COST})"
                    )));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Skips a string literal whose opening `quote` was just read (`"` with escapes, or a raw
/// `` ` `` string); returns its length in bytes. An unterminated one runs to the end (the
/// compiler reports it).
fn skip_string(chars: &mut std::str::Chars<'_>, quote: char, line: &mut usize) -> usize {
    let mut length = 0usize;
    while let Some(c) = chars.next() {
        if c == quote {
            break;
        }
        length += c.len_utf8();
        match c {
            '\n' => *line += 1,
            // An escape in a quoted string takes the next character with it.
            '\\' if quote == '"' => {
                if let Some(escaped) = chars.next() {
                    length += escaped.len_utf8();
                }
            }
            _ => {}
        }
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(source: &str) -> String {
        match check(source) {
            Err(PolicyError::Invalid(message)) => message,
            other => panic!("{other:?} for {source:?}"),
        }
    }

    fn nested(depth: usize) -> String {
        format!(
            "package x\nv := {}1{}\nallow if v\n",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn the_built_in_bundles_are_well_within_the_bounds() {
        for source in [
            include_str!("../../../policies/authorization/authorization.rego"),
            include_str!("../../../policies/rate_limiting/rate_limiting.rego"),
        ] {
            check(source).unwrap();
        }
    }

    #[test]
    fn deep_nesting_is_refused_naming_the_limit_and_the_line() {
        check(&nested(MAX_NESTING)).unwrap();
        let message = refused(&nested(MAX_NESTING + 1));
        assert!(
            message.contains("line 2") && message.contains("12 levels"),
            "{message}"
        );
        assert!(refused(&nested(1000)).contains("12 levels"));
        let message = refused(&"{\"a\": ".repeat(40));
        assert!(message.contains("12 levels"), "{message}");
    }

    #[test]
    fn many_nested_literals_are_refused_by_their_total_cost() {
        let lines: String = (0..20)
            .map(|i| format!("v{i} := {}1{}\n", "[".repeat(12), "]".repeat(12)))
            .collect();
        let message = refused(&format!("package x\n{lines}"));
        assert!(message.contains(&MAX_NESTING_COST.to_string()), "{message}");
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let hidden = "[".repeat(100);
        check(&format!(
            "package x\n# {hidden}\na := \"{hidden}\"\nb := `{hidden}`\nc := \"\\\" {hidden}\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn long_strings_and_large_sources_are_refused() {
        let message = refused(&format!(
            "package x\na := \"{}\"\n",
            "x".repeat(MAX_STRING_BYTES + 1)
        ));
        assert!(
            message.contains("line 2") && message.contains("string literal"),
            "{message}"
        );
        let message = refused(&"#".repeat(MAX_SOURCE_BYTES + 1));
        assert!(message.contains(&MAX_SOURCE_BYTES.to_string()), "{message}");
    }

    /// The deepest run of opening brackets with nothing else between them: such a run is
    /// nesting whatever else the source holds.
    fn longest_bracket_run(source: &str) -> usize {
        source
            .split(|c: char| !matches!(c, '(' | '[' | '{'))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_fuzz_corpus_is_checked_without_panicking() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/policy_source");
        for entry in std::fs::read_dir(dir).unwrap() {
            let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let _ = check(&source);
        }
    }

    proptest::proptest! {
        // A run of more than MAX_NESTING opening brackets outside strings and comments is
        // refused; the check itself never panics, whatever the source.
        #[test]
        fn fuzz_bracket_heavy_sources(source in r#"[\[\](){}"`#\\\na-z1 ]{0,3000}"#) {
            let verdict = check(&source);
            let plain = !source.contains(['"', '`', '#']);
            if plain && longest_bracket_run(&source) > MAX_NESTING {
                proptest::prop_assert!(verdict.is_err(), "{source:?} was accepted");
            }
        }

        #[test]
        fn fuzz_deep_runs_anywhere_are_refused(
            before in r#"[\[\](){}a-z1 \n]{0,300}"#,
            depth in (MAX_NESTING + 1)..400,
            after in r#"[\[\](){}"`#a-z1 \n]{0,300}"#,
        ) {
            let source = format!("{before}{}{after}", "[".repeat(depth));
            proptest::prop_assert!(check(&source).is_err(), "{source:?} was accepted");
        }

        #[test]
        fn fuzz_any_text(source in proptest::string::string_regex("(?s).{0,2000}").unwrap()) {
            let _ = check(&source);
        }
    }
}

//! Linear-time regular-expression matching of file names, for `.pattern` files.
//!
//! A `.pattern` without `<...>` blocks is, for Bio-Formats, a Java regular expression
//! matched against the names under the pattern's folder. Its text comes from a lab user,
//! so a backtracking engine would let `(a|aa)*c` pin the grouping thread; the `regex`
//! crate runs in time linear in the name length, and its compiled size is capped.

use regex::RegexBuilder;

/// Why a pattern cannot be used (the message is shown to operators).
#[derive(Debug, PartialEq, Eq)]
pub struct PatternError(pub String);

/// Indices of the `names` that the whole of `pattern` matches (Java's `matches()`).
///
/// `size_limit` bounds the compiled program (bytes); a pattern over it, or one using
/// what this engine does not offer (back-references, look-around), is an error.
pub fn full_matches(
    pattern: &str,
    names: &[Option<String>],
    size_limit: usize,
) -> Result<Vec<usize>, PatternError> {
    let anchored = format!("^(?:{pattern})$");
    let rx = RegexBuilder::new(&anchored)
        .size_limit(size_limit)
        .dfa_size_limit(size_limit)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => PatternError(format!(
                "the regular expression is larger than {limit} bytes once compiled"
            )),
            other => PatternError(format!(
                "not a regular expression this service can run safely ({other})"
            )),
        })?;
    Ok(names
        .iter()
        .enumerate()
        .filter_map(|(i, name)| match name {
            Some(n) if rx.is_match(n) => Some(i),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Option<String>> {
        list.iter().map(|s| Some((*s).to_owned())).collect()
    }

    #[test]
    fn matches_whole_names_only() {
        let got = full_matches(
            r"rx_z.*\.tif",
            &names(&["rx_z1.tif", "rx_z2.tif.bak", "a_rx_z3.tif"]),
            1 << 20,
        );
        assert_eq!(got, Ok(vec![0]));
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        let got = full_matches("a|b", &names(&["a", "b", "ab", "xb"]), 1 << 20);
        assert_eq!(got, Ok(vec![0, 1]));
    }

    #[test]
    fn catastrophic_pattern_runs_in_linear_time() {
        let long = "a".repeat(100_000);
        let got = full_matches("(a|aa)*c", &[Some(long)], 1 << 20);
        assert_eq!(got, Ok(vec![]));
    }

    #[test]
    fn undecodable_names_never_match() {
        assert_eq!(
            full_matches(".*", &[None, Some("x".into())], 1 << 20),
            Ok(vec![1])
        );
    }

    #[test]
    fn backreference_is_refused() {
        let err = full_matches(r"(a)\1", &names(&["aa"]), 1 << 20).unwrap_err();
        assert!(err.0.contains("not a regular expression"), "{}", err.0);
    }

    #[test]
    fn oversized_program_is_refused() {
        let err = full_matches("a{1000}{1000}", &names(&["a"]), 1 << 16).unwrap_err();
        assert!(err.0.contains("larger than"), "{}", err.0);
    }
}

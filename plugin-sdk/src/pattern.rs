//! Regular-expression errors a plugin author can act on.
//!
//! Plugins usually build `regex` without its Unicode tables (`default-features = false`),
//! which keeps a component small. Then `\b`, `\w`, `\d`, `\s` and `\p{..}` mean their
//! Unicode forms, whose tables are missing, and the regex crate's message
//! (`error building NFA`) does not say so. [`pattern_error`] does, with the fix.

use std::error::Error;

/// A message for `error`, raised compiling `pattern`: the whole chain of causes, and where
/// the pattern uses a class that needs Unicode tables, what to write instead.
///
/// ```
/// let pattern = r"\bCUST-[0-9]{8}";
/// # #[derive(Debug)] struct E; impl std::fmt::Display for E { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { f.write_str("error building NFA") } } impl std::error::Error for E {}
/// # let error = E;
/// let message = sluice_plugin_sdk::pattern_error(pattern, &error);
/// assert!(message.contains(r"(?-u:\b)"));
/// ```
pub fn pattern_error(pattern: &str, error: &dyn Error) -> String {
    let mut message = format!("invalid pattern `{pattern}`: {error}");
    let mut cause = error.source();
    while let Some(inner) = cause {
        message.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    // Only where the failure is about Unicode: an ASCII-mode build accepts `\d` and `\b`.
    let about_unicode = message.contains("Unicode") || message.contains("NFA");
    let hints: Vec<&str> = UNICODE_CLASSES
        .iter()
        .filter(|(class, _)| about_unicode && pattern.contains(class))
        .map(|(_, hint)| *hint)
        .collect();
    if !hints.is_empty() {
        message.push_str(
            ". The pattern uses Unicode classes, and the regex crate as plugins build it \
             (default-features = false) has no Unicode tables: ",
        );
        message.push_str(&hints.join("; "));
        message.push_str(
            " (or enable regex's `unicode-perl` feature, at some hundred KiB of component size)",
        );
    }
    message
}

const UNICODE_CLASSES: [(&str, &str); 6] = [
    (r"\b", r"write (?-u:\b) for an ASCII word boundary"),
    (r"\B", r"write (?-u:\B) for an ASCII non-boundary"),
    (r"\d", "write [0-9] for a digit"),
    (r"\w", "write [A-Za-z0-9_] for a word character"),
    (r"\s", r"write [\t\n\r ] for white space"),
    (
        r"\p{",
        r"Unicode properties (\p{..}) have no ASCII form: list the characters",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(pattern: &str) -> Result<regex::Regex, String> {
        regex::Regex::new(pattern).map_err(|e| pattern_error(pattern, &e))
    }

    #[test]
    fn a_unicode_word_boundary_says_what_to_write_instead() {
        let message = compile(r"\bCUST-[0-9]{8}\b").unwrap_err();
        assert!(message.contains(r"(?-u:\b)"), "{message}");
        assert!(message.contains("no Unicode tables"), "{message}");
        // The advice works.
        assert!(
            compile(r"(?-u:\b)CUST-[0-9]{8}(?-u:\b)")
                .unwrap()
                .is_match("id CUST-00123456.")
        );
    }

    #[test]
    fn a_plain_syntax_error_names_the_pattern_without_unicode_advice() {
        let message = compile("CUST-(").unwrap_err();
        assert!(message.starts_with("invalid pattern `CUST-(`"), "{message}");
        assert!(!message.contains("Unicode"), "{message}");
    }
}

//! `${VAR}` and `${VAR:-default}` in configuration string values.
//!
//! Interpolation runs on the merged value tree (file + `PGFANOUT__…`
//! overrides), not on the YAML text, so an error can name the dotted path of
//! the value that refers to a missing variable, and a value can never break
//! the YAML syntax. Values of variables whose name says they hold a secret are
//! remembered so the loader can scrub them from every error message.

use std::fmt::Write as _;

/// What a variable name must contain (upper-cased) for its value to be
/// treated as a secret and never echoed.
const SECRET_MARKERS: [&str; 4] = ["PASSWORD", "SECRET", "TOKEN", "KEY"];

/// True when a variable with this name holds a secret.
pub fn is_secret_variable(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| upper.contains(m))
}

/// Expands `${NAME}` and `${NAME:-default}` in `s`; `$${` is a literal `${`.
///
/// Returns `Ok(None)` when `s` contains no reference (nothing to replace).
/// `${NAME:-default}` uses the default when NAME is unset or empty (as the
/// shell does). Values of secret variables (see [`is_secret_variable`]) are
/// pushed to `secrets`. The error names the variable but never a value.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>, secrets: &mut Vec<String>) -> Result<Option<String>, String> {
    if !s.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            changed = true;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let Some(end) = after.find('}') else {
            return Err("unclosed \"${\": expected ${NAME} or ${NAME:-default} (write $${ for a literal \"${\")".into());
        };
        let inner = &after[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.starts_with(|c: char| c.is_ascii_digit())
        {
            let mut msg = String::new();
            let _ = write!(msg, "\"${{{name}...}}\" is not a variable reference: expected ${{NAME}} or ${{NAME:-default}} with NAME made of letters, digits and _");
            return Err(msg);
        }
        let value = match (lookup(name), default) {
            (Some(v), Some(d)) if v.is_empty() => d.to_string(),
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(format!("environment variable {name} is not set (set it, or write ${{{name}:-default}} to give a default)"));
            }
        };
        if is_secret_variable(name) && !value.is_empty() {
            secrets.push(value.clone());
        }
        out.push_str(&value);
        rest = &after[end + 1..];
        changed = true;
    }
    out.push_str(rest);
    Ok(changed.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db".into()),
            "EMPTY" => Some(String::new()),
            "PGPASSWORD" => Some("hunter2".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_defaults() {
        let mut secrets = Vec::new();
        let r = |s: &str, secrets: &mut Vec<String>| expand(s, &env, secrets);
        assert_eq!(r("plain", &mut secrets), Ok(None));
        assert_eq!(r("cost $5", &mut secrets), Ok(None));
        assert_eq!(r("h=${HOST}:5432", &mut secrets), Ok(Some("h=db:5432".into())));
        assert_eq!(r("${NOPE:-x.y}", &mut secrets), Ok(Some("x.y".into())));
        assert_eq!(r("${EMPTY:-d}", &mut secrets), Ok(Some("d".into())));
        assert_eq!(r("${EMPTY}", &mut secrets), Ok(Some(String::new())));
        assert_eq!(r("$${HOST}", &mut secrets), Ok(Some("${HOST}".into())));
        assert!(secrets.is_empty());
        assert_eq!(r("u:${PGPASSWORD}@h", &mut secrets), Ok(Some("u:hunter2@h".into())));
        assert_eq!(secrets, vec!["hunter2".to_string()]);
    }

    #[test]
    fn errors_name_the_variable_not_the_value() {
        let mut secrets = Vec::new();
        let err = expand("${NOPE}", &env, &mut secrets).unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(expand("${HOST", &env, &mut secrets).unwrap_err().contains("unclosed"));
        assert!(expand("${1X}", &env, &mut secrets).unwrap_err().contains("not a variable reference"));
        assert!(expand("${}", &env, &mut secrets).is_err());
    }

    #[test]
    fn secret_names() {
        for n in ["PGPASSWORD", "neo4j_password", "API_TOKEN", "AWS_SECRET_ACCESS_KEY", "SSH_KEY"] {
            assert!(is_secret_variable(n), "{n}");
        }
        assert!(!is_secret_variable("HOST"));
    }
}

//! Keeping secrets out of logs and error messages.
//!
//! Two kinds of secrets exist in a configuration: passwords inside URLs
//! (`postgres://user:password@host/db`) and values interpolated from secret
//! environment variables (`${PGPASSWORD}`). The loader scrubs both from every
//! error it returns; [`redact_url`] and [`redact_json`] are for anything that
//! prints configuration (logs, `Debug`).

use std::borrow::Cow;

/// Field names whose values are always hidden by [`redact_json`].
const SECRET_FIELDS: [&str; 4] = ["password", "secret", "token", "api_key"];

/// Replaces the password of every `scheme://user:password@host` URL in `s`
/// with `***`. Text without such a URL is returned unchanged (borrowed).
pub fn redact_url(s: &str) -> Cow<'_, str> {
    if !s.contains("://") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // userinfo ends at the last '@' before the authority ends.
        let authority_end =
            tail.find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"' || c == '\'').unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                        changed = true;
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(s)
    }
}

/// The password part of a URL, if it has one (used to collect secrets).
pub fn url_password(s: &str) -> Option<&str> {
    let tail = &s[s.find("://")? + 3..];
    let authority = &tail[..tail.find(['/', '?', '#']).unwrap_or(tail.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// Scrubs `text`: URL passwords become `***`, and so does every occurrence
/// of each string in `secrets`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = redact_url(text).into_owned();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// A copy of `v` fit for printing: fields named like a secret (`password`,
/// `secret`, `token`, `api_key`, or containing those words) are `"***"`, and
/// URL passwords in strings are hidden.
pub fn redact_json(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) => serde_json::Value::String(redact_url(s).into_owned()),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(redact_json).collect()),
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if SECRET_FIELDS.iter().any(|f| lower.contains(f)) && !v.is_null() {
                        (k.clone(), serde_json::Value::String("***".into()))
                    } else {
                        (k.clone(), redact_json(v))
                    }
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_url_passwords() {
        assert_eq!(redact_url("postgres://rep:s3cr%40t@db:5432/shop?sslmode=require"), "postgres://rep:***@db:5432/shop?sslmode=require");
        assert_eq!(redact_url("postgres://rep@db/shop"), "postgres://rep@db/shop");
        assert_eq!(redact_url("x: \"redis://:pw@h:6379/0\" and http://a:b@c"), "x: \"redis://:***@h:6379/0\" and http://a:***@c");
        assert!(matches!(redact_url("no url here"), Cow::Borrowed(_)));
        assert_eq!(url_password("postgres://rep:pw@db/shop"), Some("pw"));
        assert_eq!(url_password("postgres://rep@db/shop"), None);
    }

    #[test]
    fn scrubs_secrets_and_fields() {
        assert_eq!(scrub("bad value \"hunter2\" here", &["hunter2".into()]), "bad value \"***\" here");
        let v = serde_json::json!({"uri": "bolt://neo4j:pw@h", "password": "pw", "nested": [{"auth_token": "t"}], "key": "cart:{id}"});
        let r = redact_json(&v).to_string();
        assert!(!r.contains("pw") && !r.contains("\"t\""), "{r}");
        assert!(r.contains("cart:{id}"), "{r}");
    }
}

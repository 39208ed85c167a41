//! Array and row literals (`array_out`, `record_out` text) to nested JSON
//! arrays and objects, each element decoded by its own type's decoder. One
//! pass over the text, one scratch buffer for quoted elements.

use std::sync::Arc;

use pgfanout_sdk::Value;

use super::TypeDecoder;
use crate::pgoutput::DecodeError;

/// A small cursor over an array or row literal.
struct Literal<'a> {
    text: &'a [u8],
    pos: usize,
    type_name: &'static str,
}

impl<'a> Literal<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn err(&self, detail: &'static str) -> DecodeError {
        DecodeError::value(self.type_name, self.text, detail)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b) if b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// Reads a double-quoted string (the cursor is on the opening quote) into
    /// `scratch`, undoing backslash escapes (and `""` inside row literals).
    fn quoted(&mut self, scratch: &mut Vec<u8>, doubled_quotes: bool) -> Result<(), DecodeError> {
        self.pos += 1;
        loop {
            let rest = &self.text[self.pos..];
            let stop = rest.iter().position(|&b| b == b'"' || b == b'\\').ok_or_else(|| self.err("unterminated quoted element"))?;
            scratch.extend_from_slice(&rest[..stop]);
            self.pos += stop;
            if self.text[self.pos] == b'\\' {
                let escaped = *self.text.get(self.pos + 1).ok_or_else(|| self.err("dangling backslash"))?;
                scratch.push(escaped);
                self.pos += 2;
            } else if doubled_quotes && self.text.get(self.pos + 1) == Some(&b'"') {
                scratch.push(b'"');
                self.pos += 2;
            } else {
                self.pos += 1;
                return Ok(());
            }
        }
    }
}

/// Parses an array literal (`array_out` form): optional `[lo:hi]...=` bounds,
/// nested braces, elements separated by `delim`, quoted elements with
/// backslash escapes, unquoted `NULL` for null elements.
pub(super) fn decode_array(text: &[u8], elem: &TypeDecoder, delim: u8) -> Result<Value, DecodeError> {
    let mut lit = Literal { text, pos: 0, type_name: "array" };
    if text.first() == Some(&b'[') {
        let eq = text.iter().position(|&b| b == b'=').ok_or_else(|| lit.err("dimensions without '='"))?;
        lit.pos = eq + 1;
    }
    lit.skip_ws();
    let mut scratch = Vec::new();
    let value = array_level(&mut lit, elem, delim, &mut scratch, 0)?;
    lit.skip_ws();
    if lit.pos != text.len() {
        return Err(lit.err("unexpected text after the closing brace"));
    }
    Ok(value)
}

fn array_level(lit: &mut Literal<'_>, elem: &TypeDecoder, delim: u8, scratch: &mut Vec<u8>, depth: usize) -> Result<Value, DecodeError> {
    if depth > 6 {
        return Err(lit.err("more than 6 dimensions"));
    }
    if lit.peek() != Some(b'{') {
        return Err(lit.err("expected '{'"));
    }
    lit.pos += 1;
    let mut items = Vec::new();
    lit.skip_ws();
    if lit.peek() == Some(b'}') {
        lit.pos += 1;
        return Ok(Value::Array(items));
    }
    loop {
        lit.skip_ws();
        match lit.peek() {
            Some(b'{') => items.push(array_level(lit, elem, delim, scratch, depth + 1)?),
            Some(b'"') => {
                scratch.clear();
                lit.quoted(scratch, false)?;
                items.push(elem.decode(scratch)?);
            }
            Some(_) => items.push(unquoted_element(lit, elem, delim, scratch)?),
            None => return Err(lit.err("unterminated array")),
        }
        lit.skip_ws();
        match lit.peek() {
            Some(b'}') => {
                lit.pos += 1;
                return Ok(Value::Array(items));
            }
            Some(b) if b == delim => lit.pos += 1,
            _ => return Err(lit.err("expected a delimiter or '}'")),
        }
    }
}

fn unquoted_element(lit: &mut Literal<'_>, elem: &TypeDecoder, delim: u8, scratch: &mut Vec<u8>) -> Result<Value, DecodeError> {
    let start = lit.pos;
    let mut escaped = false;
    while let Some(b) = lit.peek() {
        if b == delim || b == b'}' {
            break;
        }
        if b == b'"' || b == b'{' {
            return Err(lit.err("unexpected character in an unquoted element"));
        }
        if b == b'\\' {
            escaped = true;
            lit.pos += 1;
        }
        lit.pos += 1;
    }
    let end = lit.pos.min(lit.text.len());
    if !escaped {
        let raw = lit.text[start..end].trim_ascii_end();
        if raw.eq_ignore_ascii_case(b"NULL") {
            return Ok(Value::Null);
        }
        return elem.decode(raw);
    }
    scratch.clear();
    let mut i = start;
    let mut keep = 0; // length of scratch up to the last escaped byte (never trimmed)
    while i < end {
        if lit.text[i] == b'\\' && i + 1 < end {
            scratch.push(lit.text[i + 1]);
            keep = scratch.len();
            i += 2;
        } else {
            scratch.push(lit.text[i]);
            i += 1;
        }
    }
    while scratch.len() > keep && scratch.last().is_some_and(|b| b.is_ascii_whitespace()) {
        scratch.pop();
    }
    elem.decode(scratch)
}

/// Parses a row literal (`record_out` form): `(a,"b c",)`; an empty unquoted
/// field is NULL, `""` is the empty string. A literal with fewer fields than
/// the type's current attributes (written before an attribute was added)
/// gets NULL for the missing ones; one with more fields is an error.
pub(super) fn decode_record(text: &[u8], fields: &[(Arc<str>, Arc<TypeDecoder>)]) -> Result<Value, DecodeError> {
    let mut lit = Literal { text, pos: 0, type_name: "composite" };
    lit.skip_ws();
    if lit.peek() != Some(b'(') {
        return Err(lit.err("expected '('"));
    }
    lit.pos += 1;
    let mut out = Vec::with_capacity(fields.len());
    let mut scratch = Vec::new();
    for (i, (name, decoder)) in fields.iter().enumerate() {
        let start = lit.pos;
        let mut simple = true;
        scratch.clear();
        loop {
            match lit.peek() {
                None => return Err(lit.err("unterminated row literal")),
                Some(b',' | b')') => break,
                Some(b'"') => {
                    if simple {
                        scratch.extend_from_slice(&lit.text[start..lit.pos]);
                        simple = false;
                    }
                    lit.quoted(&mut scratch, true)?;
                }
                Some(b'\\') => {
                    if simple {
                        scratch.extend_from_slice(&lit.text[start..lit.pos]);
                        simple = false;
                    }
                    let escaped = *lit.text.get(lit.pos + 1).ok_or_else(|| lit.err("dangling backslash"))?;
                    scratch.push(escaped);
                    lit.pos += 2;
                }
                Some(b) => {
                    if !simple {
                        scratch.push(b);
                    }
                    lit.pos += 1;
                }
            }
        }
        let value = if lit.pos == start {
            Value::Null
        } else if simple {
            decoder.decode(&lit.text[start..lit.pos])?
        } else {
            decoder.decode(&scratch)?
        };
        out.push((name.clone(), value));
        let last = i + 1 == fields.len();
        match (lit.peek(), last) {
            (Some(b','), false) => lit.pos += 1,
            (Some(b')'), true) => lit.pos += 1,
            (Some(b')'), false) => {
                // A value written before `ALTER TYPE ... ADD ATTRIBUTE` (still
                // in the slot): the attributes it lacks read as NULL, as they
                // do in PostgreSQL for rows stored with the old shape.
                lit.pos += 1;
                out.extend(fields[i + 1..].iter().map(|(name, _)| (name.clone(), Value::Null)));
                break;
            }
            _ => return Err(lit.err("more fields than the type has attributes")),
        }
    }
    if fields.is_empty() {
        if lit.peek() != Some(b')') {
            return Err(lit.err("expected ')'"));
        }
        lit.pos += 1;
    }
    lit.skip_ws();
    if lit.pos != text.len() {
        return Err(lit.err("unexpected text after ')'"));
    }
    Ok(Value::Object(out))
}

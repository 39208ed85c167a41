//! [`Text`]: the immutable UTF-8 string of a column value.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// Longest text kept inline: 38 bytes keeps `Text` at 40 bytes, the size of
/// the `Bytes` it otherwise holds plus a tag, and covers most column values
/// (numbers, timestamps at 25 bytes, UUIDs at 36, MD5 hex at 32).
const INLINE: usize = 38;

/// Immutable UTF-8 text that clones without copying.
///
/// Short text (up to 38 bytes) is stored inline: it is copied, not shared.
/// Longer text slices a shared buffer (a received replication message, a
/// snapshot's read buffer), so a long value is not copied per column.
///
/// Why not only the slice: every slice takes a reference on its buffer (a
/// locked increment, and a decrement when dropped, on the counter every
/// value of the buffer shares). With one slice per column value, that
/// reference counting was 10–11% of pgfanout's CPU samples in the
/// streaming benchmark; copying up to 38 bytes costs less. The decoder's
/// tuples hold their message once and give values as ranges of it
/// ([`Text::from_utf8_in`]), so a row of short values takes no reference per
/// value at all.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    /// `buf[..len]`, valid UTF-8.
    Inline { len: u8, buf: [u8; INLINE] },
    /// Valid UTF-8.
    Shared(Bytes),
}

impl Text {
    /// Text over `&'static` data: shared, never copied.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Repr::Shared(Bytes::from_static(s.as_bytes())))
    }

    /// The text as `&str`.
    #[inline]
    pub fn as_str(&self) -> &str {
        let bytes = match &self.0 {
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Shared(b) => &b[..],
        };
        // SAFETY: every constructor checks (or is given) UTF-8: `From<&str>`
        // and `From<String>` take str, `TryFrom<Bytes>` checks, `slice_ref`
        // takes a `&str` inside `self`.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(bytes)
        }
    }

    /// `self[range]` as bytes sharing its buffer (`None` for short inline
    /// text, which has no buffer to share).
    pub fn shared(&self, range: std::ops::Range<usize>) -> Option<Bytes> {
        match &self.0 {
            Repr::Shared(b) => Some(b.slice(range)),
            Repr::Inline { .. } => None,
        }
    }

    /// Text of `s`, which must lie within `self` (e.g. a trimmed part):
    /// shares `self`'s buffer instead of copying, unless short.
    ///
    /// # Panics
    /// When `s` is not part of `self` (as `Bytes::slice_ref`).
    pub fn slice_ref(&self, s: &str) -> Text {
        match &self.0 {
            Repr::Shared(b) if s.len() > INLINE => Text(Repr::Shared(b.slice_ref(s.as_bytes()))),
            _ => {
                let whole = self.as_str().as_bytes().as_ptr_range();
                let part = s.as_bytes().as_ptr_range();
                assert!(
                    s.is_empty() || (whole.start <= part.start && part.end <= whole.end),
                    "Text::slice_ref: the slice is not part of this text"
                );
                Text::inline(s)
            }
        }
    }

    /// A copy of `bytes`, if they are UTF-8 (inline when short). ASCII is
    /// checked first, a word at a time.
    #[inline]
    pub fn from_utf8(bytes: &[u8]) -> Result<Text, std::str::Utf8Error> {
        Text::checked(bytes, || Bytes::copy_from_slice(bytes))
    }

    /// Text of `text`, which lies within `buf`, if it is UTF-8: copied
    /// inline when short, else a slice of `buf` (one reference on it).
    ///
    /// # Panics
    /// When `text` is long and not part of `buf` (as `Bytes::slice_ref`).
    #[inline]
    pub fn from_utf8_in(text: &[u8], buf: &Bytes) -> Result<Text, std::str::Utf8Error> {
        Text::checked(text, || buf.slice_ref(text))
    }

    /// `bytes` if UTF-8 (ASCII checked first): inline when short, else the
    /// buffer `shared` gives.
    #[inline]
    fn checked(bytes: &[u8], shared: impl FnOnce() -> Bytes) -> Result<Text, std::str::Utf8Error> {
        if !bytes.is_ascii() {
            std::str::from_utf8(bytes)?;
        }
        if bytes.len() <= INLINE {
            return Ok(Text::inline_bytes(bytes));
        }
        Ok(Text(Repr::Shared(shared())))
    }

    #[inline]
    fn inline(s: &str) -> Text {
        Text::inline_bytes(s.as_bytes())
    }

    /// `bytes` (UTF-8, at most `INLINE` long) copied inline.
    #[inline]
    fn inline_bytes(bytes: &[u8]) -> Text {
        debug_assert!(bytes.len() <= INLINE);
        let mut buf = [0u8; INLINE];
        buf[..bytes.len()].copy_from_slice(bytes);
        Text(Repr::Inline { len: bytes.len() as u8, buf })
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::inline("")
    }
}

impl Deref for Text {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        if s.len() <= INLINE {
            Text::inline(s)
        } else {
            Text(Repr::Shared(Bytes::copy_from_slice(s.as_bytes())))
        }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        if s.len() <= INLINE {
            Text::inline(&s)
        } else {
            Text(Repr::Shared(Bytes::from(s.into_bytes())))
        }
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::from(s.as_str())
    }
}

impl From<Box<str>> for Text {
    fn from(s: Box<str>) -> Text {
        Text::from(String::from(s))
    }
}

impl From<std::borrow::Cow<'_, str>> for Text {
    fn from(s: std::borrow::Cow<'_, str>) -> Text {
        match s {
            std::borrow::Cow::Borrowed(s) => Text::from(s),
            std::borrow::Cow::Owned(s) => Text::from(s),
        }
    }
}

impl TryFrom<Bytes> for Text {
    type Error = std::str::Utf8Error;

    /// Shares `bytes` (copies them when short) if they are UTF-8. ASCII is
    /// checked first, a word at a time: several times faster than
    /// `from_utf8` on values this short.
    fn try_from(bytes: Bytes) -> Result<Text, Self::Error> {
        if !bytes.is_ascii() {
            std::str::from_utf8(&bytes)?;
        }
        if bytes.len() <= INLINE {
            return Ok(Text::inline_bytes(&bytes));
        }
        Ok(Text(Repr::Shared(bytes)))
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.as_str().to_owned()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Text) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Text) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_inline_and_long_text_shares_its_buffer() {
        assert_eq!(std::mem::size_of::<Text>(), 40);
        let long = Bytes::from("x".repeat(100));
        let t = Text::try_from(long.clone()).unwrap();
        assert!(matches!(t.0, Repr::Shared(ref b) if b.as_ptr() == long.as_ptr()));
        let short = Text::try_from(long.slice(..INLINE)).unwrap();
        assert!(matches!(short.0, Repr::Inline { len, .. } if len as usize == INLINE));
        assert_eq!(&*short, &"x".repeat(INLINE));
        assert!(Text::try_from(Bytes::from_static(b"\xff")).is_err());
        assert_eq!(&*Text::try_from(Bytes::from(format!("{}é", "y".repeat(40)))).unwrap(), format!("{}é", "y".repeat(40)));
        assert!(Text::try_from(Bytes::from([b'y'; 40].iter().chain(b"\xc3").copied().collect::<Vec<u8>>())).is_err());
        for s in ["", "é", &"y".repeat(INLINE + 1)] {
            assert_eq!(Text::from(s), *s);
            assert_eq!(Text::from(s.to_string()).as_str(), s);
        }
    }

    #[test]
    fn text_in_a_buffer_is_copied_when_short_and_sliced_when_long() {
        let buf = Bytes::from(format!("{}|ab|é", "w".repeat(50)));
        let long = Text::from_utf8_in(&buf[..50], &buf).unwrap();
        assert!(matches!(long.0, Repr::Shared(ref b) if b.as_ptr() == buf.as_ptr()));
        assert_eq!(&*long, "w".repeat(50));
        let short = Text::from_utf8_in(&buf[51..53], &buf).unwrap();
        assert!(matches!(short.0, Repr::Inline { len: 2, .. }));
        assert_eq!(&*Text::from_utf8_in(&buf[54..], &buf).unwrap(), "é");
        assert!(Text::from_utf8_in(&buf[54..55], &buf).is_err());
        assert_eq!(&*Text::from_utf8(&buf[..]).unwrap(), &*String::from_utf8(buf.to_vec()).unwrap());
        assert_eq!(&*Text::from_utf8(b"2024").unwrap(), "2024");
        assert!(Text::from_utf8(b"\xc3").is_err());
    }

    #[test]
    fn slice_ref_keeps_what_it_is_given() {
        let long = Text::from(format!("  {}  ", "z".repeat(50)));
        let trimmed = long.slice_ref(long.trim());
        assert_eq!(&*trimmed, "z".repeat(50));
        let short = Text::from("  [1, 2]  ");
        assert_eq!(&*short.slice_ref(short.trim()), "[1, 2]");
        let from_long = long.slice_ref(&long[2..5]);
        assert_eq!(&*from_long, "zzz");
    }

    #[test]
    #[should_panic(expected = "not part of this text")]
    fn slice_ref_of_foreign_text_panics() {
        let a = Text::from("abc");
        let _ = a.slice_ref("abc");
    }
}

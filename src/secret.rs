//! Wrapper types for secret material.
//!
//! The server secret (the HMAC key behind every owner hash), the HS256 signing
//! key and bearer tokens all live in [`Secret`]. Its `Debug` prints a
//! placeholder and it has no `Display`, so a secret cannot reach a log line or a
//! panic message by accident; the bytes are only reachable through
//! [`Secret::expose`], which makes every use greppable.

use std::fmt;

/// Bytes that must never be printed.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into().into_boxed_slice())
    }

    /// The secret bytes; every caller is a deliberate use of the secret.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes, safe to report (used to refuse short keys).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the secret holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses a secret given as text (a flag or environment variable), so that
/// it is never held as a printable `String`.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(text.as_bytes().to_vec()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted; {} bytes])", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite the key material before the allocation is
        // returned, so a later heap dump is less likely to hold it.
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into our
            // own allocation; volatile keeps the store from being elided.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let s = Secret::new(b"hunter2-hunter2-hunter2-hunter2!".to_vec());
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("32 bytes"));
    }
}

//! Authentication: from a bearer token to the caller's owner hash.
//!
//! Identity comes from one place only, a verified JWT in the `Authorization`
//! header. [`Caller`] is the extractor handlers take as an argument; it holds
//! the caller's [`OwnerHash`] and nothing a client could have chosen.

mod caller;
pub mod client;
mod keys;
mod mint;
mod verifier;

pub use caller::{
    AuthState, Caller, InternalCaller, bearer, client_locked, client_rejected, client_tag,
    owner_rejected,
};
pub use keys::{KeyError, load_keys};
pub use mint::{Claims, MintError, Signer, mint_dev_token};
pub use verifier::{Principal, Verifier, VerifierConfig, is_identity};

/// Why a token was refused. Logged with hashed identifiers only; every
/// variant becomes the same 401 response.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing authorization header")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("authorization header is not a bearer token")]
    NotBearer,
    /// The token is larger than the configured cap.
    #[error("token exceeds {0} bytes")]
    TooLarge(usize),
    /// The token's header cannot be parsed (covers `alg: none`).
    #[error("malformed token header: {0}")]
    MalformedHeader(jsonwebtoken::errors::Error),
    /// No configured key matches the token's algorithm and key id.
    #[error("no configured key for this token's algorithm and kid")]
    UnknownKey,
    /// Signature, expiry, not-before, issuer or audience check failed.
    #[error("token rejected: {0}")]
    Rejected(jsonwebtoken::errors::Error),
    /// A required identity claim is absent or not a usable string.
    #[error("claim `{0}` is missing or malformed")]
    BadClaim(String),
}

impl AuthError {
    /// Whether the token's signature was verified before it was refused
    /// (expired, not yet valid, wrong issuer or audience, a bad claim): such
    /// a token was issued by a trusted key, so it is no guess.
    pub fn signature_checked(&self) -> bool {
        use jsonwebtoken::errors::ErrorKind;
        match self {
            Self::Rejected(e) => matches!(
                e.kind(),
                ErrorKind::ExpiredSignature
                    | ErrorKind::ImmatureSignature
                    | ErrorKind::InvalidIssuer
                    | ErrorKind::InvalidAudience
                    | ErrorKind::MissingRequiredClaim(_)
            ),
            Self::BadClaim(_) => true,
            _ => false,
        }
    }

    /// A fixed word for the reason, for metrics labels and the audit trail.
    pub fn code(&self) -> &'static str {
        use jsonwebtoken::errors::ErrorKind;
        match self {
            Self::Missing => "missing",
            Self::NotBearer => "not_bearer",
            Self::TooLarge(_) => "too_large",
            Self::MalformedHeader(_) => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Rejected(e) => match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidSignature => "bad_signature",
                ErrorKind::InvalidIssuer => "wrong_issuer",
                ErrorKind::InvalidAudience => "wrong_audience",
                ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                _ => "rejected",
            },
            Self::BadClaim(_) => "bad_claim",
        }
    }
}

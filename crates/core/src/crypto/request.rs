//! Crypto requests as received and as validated: one shape per operation, data decoded and
//! bounded, and nothing of the handle or the data in any `Debug` form.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::audit::AuditAction;
use crate::diagnostics::{Problem, Subject};
use crate::ids::TenantId;
use crate::purpose::Purpose;
use crate::reason::ReasonCode;
use crate::redacted::Redacted;
use crate::refusal::Refusal;
use crate::request::MAX_REF_LEN;

/// The most data (or plaintext) an operation takes, decoded: 64 KiB, inclusive.
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// The prefix of a ciphertext; the version and the sealed bytes follow, each after a colon.
pub const CIPHERTEXT_PREFIX: &str = "skc1";
/// Length of an AES-256-GCM nonce, drawn by the host for each encryption.
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A crypto operation (the last segment of `/v1/crypto/{op}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CryptoOp {
    /// HMAC-SHA256.
    Mac,
    /// An Ed25519 signature.
    Sign,
    /// Checks a MAC or a signature.
    Verify,
    /// AES-256-GCM encryption.
    Encrypt,
    /// AES-256-GCM decryption.
    Decrypt,
}

impl CryptoOp {
    /// Every operation.
    pub const ALL: [Self; 5] = [
        Self::Mac,
        Self::Sign,
        Self::Verify,
        Self::Encrypt,
        Self::Decrypt,
    ];

    /// The route segment.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Mac => "mac",
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
        }
    }

    /// The audit action that records it.
    pub const fn action(self) -> AuditAction {
        match self {
            Self::Mac => AuditAction::Mac,
            Self::Sign => AuditAction::Sign,
            Self::Verify => AuditAction::Verify,
            Self::Encrypt => AuditAction::Encrypt,
            Self::Decrypt => AuditAction::Decrypt,
        }
    }
}

/// A crypto request as received: every operation's fields, each optional. Its `Debug` form
/// shows which fields are there, never their values.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "fields are the wire contract's, documented in DESIGN.md"
)]
pub struct RawCryptoRequest {
    pub tenant_id: Option<String>,
    pub secret_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext: Option<String>,
}

/// The base64 texts a request carried (data, plaintext, associated data, a tag, a ciphertext)
/// are wiped with it: they hold what the caller sent to be used.
impl Drop for RawCryptoRequest {
    fn drop(&mut self) {
        [
            &mut self.secret_handle,
            &mut self.data_b64,
            &mut self.signature_b64,
            &mut self.mac_b64,
            &mut self.plaintext_b64,
            &mut self.aad_b64,
            &mut self.ciphertext,
        ]
        .into_iter()
        .flatten()
        .for_each(Zeroize::zeroize);
    }
}

impl fmt::Debug for RawCryptoRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| Redacted);
        f.debug_struct("RawCryptoRequest")
            .field("tenant_id", &self.tenant_id)
            .field("secret_handle", &shown(&self.secret_handle))
            .field("data_b64", &shown(&self.data_b64))
            .field("signature_b64", &shown(&self.signature_b64))
            .field("mac_b64", &shown(&self.mac_b64))
            .field("plaintext_b64", &shown(&self.plaintext_b64))
            .field("aad_b64", &shown(&self.aad_b64))
            .field("ciphertext", &shown(&self.ciphertext))
            .finish()
    }
}

/// Bytes a caller sent to be used: wiped when dropped, never shown.
pub type Data = Zeroizing<Vec<u8>>;

/// What a verification checks.
#[derive(Clone, PartialEq, Eq)]
pub enum Tag {
    /// An Ed25519 signature (`signature_b64`).
    Signature(Vec<u8>),
    /// An HMAC-SHA256 tag (`mac_b64`).
    Mac(Vec<u8>),
}

/// A parsed `skc1:<version>:<base64url>` ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    /// The key version that sealed it.
    pub version: u64,
    /// Nonce, then the AES-256-GCM ciphertext and tag.
    pub(crate) sealed: Vec<u8>,
}

impl Ciphertext {
    /// Its wire form.
    pub(crate) fn encode(version: u64, sealed: &[u8]) -> String {
        format!(
            "{CIPHERTEXT_PREFIX}:{version}:{}",
            URL_SAFE_NO_PAD.encode(sealed)
        )
    }

    /// Parses the wire form (`None`: not one).
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(CIPHERTEXT_PREFIX)?.strip_prefix(':')?;
        let (version, body) = rest.split_once(':')?;
        // One spelling per version: digits only, no sign, no leading zero.
        if version.is_empty()
            || version.starts_with('0')
            || !version.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let version = version.parse().ok()?;
        let sealed = URL_SAFE_NO_PAD.decode(body).ok()?;
        (sealed.len() >= NONCE_LEN + TAG_LEN).then_some(Self { version, sealed })
    }
}

/// The operation's own input, decoded.
#[derive(Clone, PartialEq, Eq)]
pub enum Input {
    /// `mac`.
    Mac {
        /// The data.
        data: Data,
    },
    /// `sign`.
    Sign {
        /// The data.
        data: Data,
    },
    /// `verify`.
    Verify {
        /// The data.
        data: Data,
        /// The signature or MAC to check.
        tag: Tag,
    },
    /// `encrypt`.
    Encrypt {
        /// The plaintext.
        plaintext: Data,
        /// Associated data, authenticated and not encrypted.
        aad: Data,
    },
    /// `decrypt`.
    Decrypt {
        /// The ciphertext.
        ciphertext: Ciphertext,
        /// Associated data it was sealed with.
        aad: Data,
    },
}

impl Input {
    /// The purpose of the key the input needs.
    pub fn purpose(&self) -> Purpose {
        match self {
            Self::Mac { .. }
            | Self::Verify {
                tag: Tag::Mac(_), ..
            } => Purpose::HmacSha256,
            Self::Sign { .. }
            | Self::Verify {
                tag: Tag::Signature(_),
                ..
            } => Purpose::Ed25519,
            Self::Encrypt { .. } | Self::Decrypt { .. } => Purpose::Aes256Gcm,
        }
    }
}

/// A validated crypto request. Its `Debug` form shows the operation and tenant only.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoRequest {
    /// The tenant the handle must belong to.
    pub tenant_id: TenantId,
    /// The handle's text.
    pub handle: String,
    /// The operation and its input.
    pub input: Input,
}

impl CryptoRequest {
    /// The operation.
    pub fn op(&self) -> CryptoOp {
        match self.input {
            Input::Mac { .. } => CryptoOp::Mac,
            Input::Sign { .. } => CryptoOp::Sign,
            Input::Verify { .. } => CryptoOp::Verify,
            Input::Encrypt { .. } => CryptoOp::Encrypt,
            Input::Decrypt { .. } => CryptoOp::Decrypt,
        }
    }
}

impl fmt::Debug for CryptoRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoRequest")
            .field("tenant_id", &self.tenant_id)
            .field("op", &self.op())
            .field("handle", &Redacted)
            .finish_non_exhaustive()
    }
}

fn schema(subject: Subject, problem: Problem) -> Refusal {
    Refusal::new(ReasonCode::InputSchemaInvalid, subject, problem)
}

/// Decodes standard base64 of at most [`MAX_DATA_LEN`] bytes (`413` beyond).
fn decode(subject: Subject, text: &str) -> Result<Data, Refusal> {
    let too_large = || Refusal::new(ReasonCode::PayloadTooLarge, subject, Problem::TooLong);
    // Four characters carry three bytes: a longer text cannot decode within the bound.
    if text.len() > MAX_DATA_LEN.div_ceil(3) * 4 {
        return Err(too_large());
    }
    let data = STANDARD
        .decode(text)
        .map(Zeroizing::new)
        .map_err(|_| schema(subject, Problem::Malformed))?;
    if data.len() > MAX_DATA_LEN {
        return Err(too_large());
    }
    Ok(data)
}

/// A field the operation needs, decoded.
fn required(subject: Subject, field: Option<&String>) -> Result<Data, Refusal> {
    let text = field.ok_or_else(|| schema(subject, Problem::Missing))?;
    decode(subject, text)
}

/// An optional field, decoded (empty when absent).
fn optional(subject: Subject, field: Option<&String>) -> Result<Data, Refusal> {
    field.map_or_else(|| Ok(Zeroizing::new(Vec::new())), |t| decode(subject, t))
}

impl CryptoRequest {
    /// Parses and validates a JSON body for `op` without ever echoing it.
    pub fn from_json(op: CryptoOp, body: &[u8]) -> Result<Self, Refusal> {
        let raw: RawCryptoRequest =
            serde_json::from_slice(body).map_err(|_| schema(Subject::Body, Problem::Malformed))?;
        Self::from_raw(op, &raw)
    }

    /// Validates a received request for `op`.
    pub fn from_raw(op: CryptoOp, raw: &RawCryptoRequest) -> Result<Self, Refusal> {
        let tenant_id = match &raw.tenant_id {
            None => {
                return Err(Refusal::new(
                    ReasonCode::UpstreamInputMissing,
                    Subject::TenantId,
                    Problem::Missing,
                ));
            }
            Some(t) => TenantId::try_from(t.as_str()).map_err(|p| schema(Subject::TenantId, p))?,
        };
        let handle = raw.secret_handle.clone().ok_or_else(|| {
            Refusal::new(
                ReasonCode::UpstreamInputMissing,
                Subject::Handle,
                Problem::Missing,
            )
        })?;
        if handle.len() > MAX_REF_LEN {
            return Err(schema(Subject::Handle, Problem::TooLong));
        }
        check_fields(op, raw)?;
        let input = match op {
            CryptoOp::Mac => Input::Mac {
                data: required(Subject::DataB64, raw.data_b64.as_ref())?,
            },
            CryptoOp::Sign => Input::Sign {
                data: required(Subject::DataB64, raw.data_b64.as_ref())?,
            },
            CryptoOp::Verify => {
                let data = required(Subject::DataB64, raw.data_b64.as_ref())?;
                let tag = match (&raw.signature_b64, &raw.mac_b64) {
                    (Some(s), None) => Tag::Signature(decode(Subject::SignatureB64, s)?.to_vec()),
                    (None, Some(m)) => Tag::Mac(decode(Subject::MacB64, m)?.to_vec()),
                    (None, None) => return Err(schema(Subject::SignatureB64, Problem::Missing)),
                    (Some(_), Some(_)) => return Err(schema(Subject::MacB64, Problem::BadShape)),
                };
                Input::Verify { data, tag }
            }
            CryptoOp::Encrypt => Input::Encrypt {
                plaintext: required(Subject::PlaintextB64, raw.plaintext_b64.as_ref())?,
                aad: optional(Subject::AadB64, raw.aad_b64.as_ref())?,
            },
            CryptoOp::Decrypt => {
                let text = raw
                    .ciphertext
                    .as_deref()
                    .ok_or_else(|| schema(Subject::Ciphertext, Problem::Missing))?;
                // A ciphertext of the largest plaintext, with its prefix, version and nonce.
                if text.len() > (MAX_DATA_LEN + NONCE_LEN + TAG_LEN).div_ceil(3) * 4 + 32 {
                    return Err(Refusal::new(
                        ReasonCode::PayloadTooLarge,
                        Subject::Ciphertext,
                        Problem::TooLong,
                    ));
                }
                let ciphertext = Ciphertext::parse(text)
                    .ok_or_else(|| schema(Subject::Ciphertext, Problem::Malformed))?;
                Input::Decrypt {
                    ciphertext,
                    aad: optional(Subject::AadB64, raw.aad_b64.as_ref())?,
                }
            }
        };
        Ok(Self {
            tenant_id,
            handle,
            input,
        })
    }
}

/// Refuses a field another operation takes: a caller that sends `plaintext_b64` to `sign` has
/// mistaken the route, and must hear it rather than have the field ignored.
fn check_fields(op: CryptoOp, raw: &RawCryptoRequest) -> Result<(), Refusal> {
    let fields = [
        (Subject::DataB64, raw.data_b64.is_some()),
        (Subject::SignatureB64, raw.signature_b64.is_some()),
        (Subject::MacB64, raw.mac_b64.is_some()),
        (Subject::PlaintextB64, raw.plaintext_b64.is_some()),
        (Subject::AadB64, raw.aad_b64.is_some()),
        (Subject::Ciphertext, raw.ciphertext.is_some()),
    ];
    let allowed: &[Subject] = match op {
        CryptoOp::Mac | CryptoOp::Sign => &[Subject::DataB64],
        CryptoOp::Verify => &[Subject::DataB64, Subject::SignatureB64, Subject::MacB64],
        CryptoOp::Encrypt => &[Subject::PlaintextB64, Subject::AadB64],
        CryptoOp::Decrypt => &[Subject::Ciphertext, Subject::AadB64],
    };
    match fields
        .into_iter()
        .find(|(subject, present)| *present && !allowed.contains(subject))
    {
        Some((subject, _)) => Err(schema(subject, Problem::NotAllowedForOperation)),
        None => Ok(()),
    }
}

//! Decodes the binary arguments of the write and read NIFs into the core's types.

use offline_store::{MsgId, StoreError};
use rustler::Binary;

/// A UTF-8 text argument (a topic); `field` names it in the error.
pub fn text(bin: &Binary, field: &str) -> Result<String, StoreError> {
    std::str::from_utf8(bin.as_slice())
        .map(str::to_owned)
        .map_err(|_| StoreError::InvalidConfig {
            field: field.into(),
            reason: "must be UTF-8".into(),
        })
}

/// A msgid argument (32 hex digits). Non-UTF-8 bytes are parsed as "" so the core's
/// `invalid_msgid` names the problem.
pub fn msgid(bin: &Binary) -> Result<MsgId, StoreError> {
    MsgId::parse(std::str::from_utf8(bin.as_slice()).unwrap_or(""))
}

//! Decodes the arguments of the write, read and admin NIFs into the core's types. A wrong
//! argument is the caller's mistake, not the configuration's: it comes back as
//! `{error, {invalid_input, Why}}` naming the argument, instead of raising `badarg` in the
//! calling process (a hook) or passing for `invalid_config`.

use offline_store::{MsgId, StoreError};
use rustler::{Binary, Decoder, Term};

fn invalid(name: &str, expected: &str) -> StoreError {
    StoreError::InvalidInput(format!("{name} must be {expected}"))
}

/// Argument `name` as a `T`; `expected` says what it must be, for the error.
pub fn arg<'a, T: Decoder<'a>>(
    term: Term<'a>,
    name: &str,
    expected: &str,
) -> Result<T, StoreError> {
    term.decode().map_err(|_| invalid(name, expected))
}

/// A binary argument (a payload, a sender).
pub fn bytes<'a>(term: Term<'a>, name: &str) -> Result<Binary<'a>, StoreError> {
    arg(term, name, "a binary")
}

/// A UTF-8 text argument (a topic).
pub fn text(term: Term, name: &str) -> Result<String, StoreError> {
    std::str::from_utf8(bytes(term, name)?.as_slice())
        .map(str::to_owned)
        .map_err(|_| invalid(name, "UTF-8 text"))
}

/// An MQTT QoS argument: 0, 1 or 2. Decoded wide, because rustler's `u8` decoder cuts 300
/// down to 44 instead of refusing it.
pub fn qos(term: Term) -> Result<u8, StoreError> {
    match arg::<i64>(term, "qos", "0, 1 or 2")? {
        q @ 0..=2 => Ok(q as u8),
        _ => Err(invalid("qos", "0, 1 or 2")),
    }
}

/// A msgid argument: EMQX's 16-byte GUID as `emqx_message:id/1` holds it, or a binary of
/// 32 hex digits (the CLI, tests). What a hex binary holds is the core's to judge
/// (`invalid_msgid`); bytes that are not UTF-8 reach it as replacement characters.
pub fn msgid(term: Term) -> Result<MsgId, StoreError> {
    let id = bytes(term, "msgid")?;
    match <&[u8; 16]>::try_from(id.as_slice()) {
        Ok(guid) => Ok(MsgId::from_guid_bytes(guid)),
        Err(_) => MsgId::parse(&String::from_utf8_lossy(id.as_slice())),
    }
}

/// A msgid argument, or the atom `undefined` for none.
pub fn optional_msgid(term: Term) -> Result<Option<MsgId>, StoreError> {
    match term.atom_to_string() {
        Ok(name) if name == "undefined" => Ok(None),
        _ => msgid(term).map(Some),
    }
}

//! The loadable NIF library `libemqx_offline_cassandra_nif.so`.
//!
//! rustler's generated entry leaves `upgrade` and `unload` empty, and the VM then refuses to
//! load a second instance of the module while the first still holds the library ("Upgrade
//! not supported by this NIF library"). EMQX does exactly that: 5.8 and older reload every
//! plugin beam on each start, 5.9+ on reinstall and upgrade. This crate exports its own
//! `nif_init`, which returns `offline_nif`'s entry with both callbacks set. State lives in
//! `offline_nif`'s statics (no resource types), so an upgrade has nothing to carry over.

use rustler::codegen_runtime::{ErlNifEntry, ErlNifEnv, ErlNifTerm, c_int, c_void};

// Keep offline_nif linked in (its NIFs register themselves through `inventory`).
pub use offline_nif;

unsafe extern "C" {
    /// Emitted by `rustler::init!` in `offline_nif` (`<crate>_nif_init`).
    fn offline_nif_nif_init() -> *const ErlNifEntry;
}

/// A new module instance takes over: nothing to migrate, the statics stay as they are.
unsafe extern "C" fn upgrade(
    _env: *mut ErlNifEnv,
    _priv_data: *mut *mut c_void,
    _old_priv_data: *mut *mut c_void,
    _load_info: ErlNifTerm,
) -> c_int {
    0
}

/// The module instance is purged. The runtime is stopped by the application's `stop/1`,
/// not here: unload runs on a scheduler thread, where blocking is not allowed.
unsafe extern "C" fn unload(_env: *mut ErlNifEnv, _priv_data: *mut c_void) {}

/// # Safety
/// Called by the Erlang VM when it loads the library, once per `erlang:load_nif/2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nif_init() -> *const ErlNifEntry {
    unsafe {
        let entry = offline_nif_nif_init() as *mut ErlNifEntry;
        (*entry).upgrade = Some(upgrade);
        (*entry).unload = Some(unload);
        entry
    }
}

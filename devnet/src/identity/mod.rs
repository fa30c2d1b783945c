//! Identity on the devnet: DID documents (`diddoc`) as the PLC directory (`plc`) and the PDS
//! hosts (for `did:web`) serve them, and handle resolution (`handle`).

pub(crate) mod diddoc;
pub(crate) mod handle;
pub(crate) mod plc;

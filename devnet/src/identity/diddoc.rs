//! DID documents as PLC and did:web serve them, with the key as a Multikey or, for accounts
//! created with `legacy_key`, in the older `EcdsaSecp256k1VerificationKey2019` form.

use cid::multibase::{self, Base};
use serde_json::{Value, json};

use crate::world::state::AccountState;

/// The DID document of `acct`, whose PDS is at `pds_url`.
pub(crate) fn did_document(acct: &AccountState, pds_url: &str) -> Value {
    let did = &acct.account.did;
    json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1"
        ],
        "id": did,
        "alsoKnownAs": [format!("at://{}", acct.handle)],
        "verificationMethod": [verification_method(acct)],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": pds_url.trim_end_matches('/'),
        }],
    })
}

/// The `#atproto` verification method.
fn verification_method(acct: &AccountState) -> Value {
    let did = &acct.account.did;
    let (kind, key) = if acct.legacy_key {
        ("EcdsaSecp256k1VerificationKey2019", legacy_multibase(acct))
    } else {
        ("Multikey", acct.account.public_multibase())
    };
    json!({"id": format!("{did}#atproto"), "type": kind, "controller": did, "publicKeyMultibase": key})
}

/// `z` + base58btc of the uncompressed secp256k1 point, with no multicodec prefix.
fn legacy_multibase(acct: &AccountState) -> String {
    let point = acct.account.key.verifying_key().to_encoded_point(false);
    multibase::encode(Base::Base58Btc, point.as_bytes())
}

//! The credentials write path: Hono's update modes applied to a PUT body.
//!
//! Patch mode (the registry's GET returns secret ids but no secret data) is a superset of replace mode,
//! so one algorithm serves both: a secret without `id` is new and gets one; a secret whose `id` names a
//! stored secret of the same `(type, auth-id)` keeps the stored data unless it brings its own; an `id`
//! the device does not have is an error (Hono answers 400). Credentials absent from the body are not in
//! the result, which is how a PUT deletes them. `pwd-plain` is hashed here and never leaves.

use crate::error::{join, ValidationError};
use crate::hashing::HashOptions;

use super::{validate_credentials, Credential, SecretData, TypedCredential};

/// Validates an incoming credentials set and merges it with the stored one into what should be stored.
pub fn prepare_for_storage(
    incoming: Vec<Credential>,
    existing: &[Credential],
    opts: &HashOptions,
) -> Result<Vec<Credential>, ValidationError> {
    validate_credentials(&incoming, opts)?;
    incoming
        .into_iter()
        .enumerate()
        .map(|(i, credential)| {
            let path = format!("credentials[{i}]");
            Ok(match credential {
                Credential::HashedPassword(c) => {
                    Credential::HashedPassword(merge(c, existing, &path, opts)?)
                }
                Credential::Psk(c) => Credential::Psk(merge(c, existing, &path, opts)?),
                Credential::X509Cert(c) => Credential::X509Cert(merge(c, existing, &path, opts)?),
                Credential::Rpk(c) => Credential::Rpk(merge(c, existing, &path, opts)?),
            })
        })
        .collect()
}

fn merge<D: SecretData>(
    mut incoming: TypedCredential<D>,
    existing: &[Credential],
    path: &str,
    opts: &HashOptions,
) -> Result<TypedCredential<D>, ValidationError> {
    let stored = existing
        .iter()
        .filter_map(D::of)
        .find(|c| c.auth_id == incoming.auth_id);
    for (j, secret) in incoming.secrets.iter_mut().enumerate() {
        let spath = join(path, &format!("secrets[{j}]"));
        match &secret.id {
            None => secret.id = Some(uuid::Uuid::new_v4().simple().to_string()),
            Some(id) => {
                let known = stored
                    .and_then(|c| c.secrets.iter().find(|s| s.id.as_deref() == Some(id.as_str())))
                    .ok_or_else(|| {
                        ValidationError::at(
                            &join(&spath, "id"),
                            format!(
                                "`{id}` is not a stored secret of this credential; omit the id to add a new secret"
                            ),
                        )
                    })?;
                if !secret.data.has_data() {
                    secret.data = known.data.clone();
                }
            }
        }
        secret.data.finalize(&spath, opts)?;
    }
    Ok(incoming)
}

//! Who may make admin calls (load, unload, scale, change applications): loopback peers, or,
//! when the server has an admin token, any peer whose `authorization` is `Bearer <token>`.
//! The same rule for gRPC and REST.

use crate::error::ApiError;
use std::net::SocketAddr;

/// Checks an admin call's credentials against the server's `token`.
pub(crate) fn check_admin(
    token: Option<&str>,
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    match token {
        Some(token) => {
            let presented = authorization.and_then(|v| v.strip_prefix("Bearer "));
            if presented == Some(token) {
                Ok(())
            } else {
                Err(ApiError::unauthenticated(
                    "this call needs `authorization: Bearer <admin token>`",
                ))
            }
        }
        None => match peer {
            Some(peer) if peer.ip().is_loopback() => Ok(()),
            peer => Err(ApiError::permission_denied(format!(
                "admin calls are accepted only from loopback (peer: {peer:?}); start the \
                 server with --admin-token to allow remote administration"
            ))),
        },
    }
}

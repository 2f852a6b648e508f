//! What every handler extracts: a JSON body whose rejections are API errors, and the
//! authenticated caller.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use serde_json::json;

use crate::ServingError;
use crate::auth::{Action, Claims};
use crate::state::{AppState, REFUSAL_AUDIT_WINDOW_S, SharedState};

/// Every error the API answers with.
#[derive(utoipa::ToSchema, Serialize)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// `{ "code": "<stable snake_case code>", "message": "<for people>" }`
    error: serde_json::Value,
}

/// A JSON body whose rejections (malformed, wrong type, too large) are API errors.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<SharedState> for ApiJson<T> {
    type Rejection = ServingError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::BytesRejection(rejection))
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ServingError::BodyTooLarge {
                    limit: state.config.body_limit,
                })
            }
            Err(rejection) => Err(ServingError::BadRequest(rejection.body_text())),
        }
    }
}

/// The client's address, as the connection reports it (none when the router runs without
/// a listener, as in-process tests do).
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// Writes a refused token to the audit trail once per client address and window
/// ([`REFUSAL_AUDIT_WINDOW_S`]), its path cut to 100 bytes: a flood of bad tokens costs the
/// attacker requests and the trail one row a minute.
async fn audit_refused_token(parts: &Parts, state: &SharedState, error: &ServingError) {
    let address = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string());
    if state.refusal_audits.check(&address).is_err() {
        return;
    }
    let path = parts.uri.path();
    let cut = path.floor_char_boundary(100);
    let detail = json!({
        "path": &path[..cut],
        "reason": error.code(),
        "address": address,
        "window_s": REFUSAL_AUDIT_WINDOW_S,
    });
    state.audit("anonymous", "refused", detail).await;
}

/// The authenticated caller: a verified access token, within its rate limit.
pub struct Caller(pub Claims);

impl FromRequestParts<SharedState> for Caller {
    type Rejection = ServingError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(bearer_token) else {
            return Err(ServingError::Unauthenticated);
        };
        let claims = match state.keys.verify(token) {
            Ok(claims) => claims,
            Err(error) => {
                audit_refused_token(parts, state, &error).await;
                return Err(error);
            }
        };
        state
            .user_limits
            .check(&claims.sub.to_string())
            .map_err(|retry_after_s| ServingError::RateLimited { retry_after_s })?;
        Ok(Self(claims))
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110 11.1: `bearer` is `Bearer`), and spaces around the token are
/// allowed.
pub(crate) fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Caller {
    pub(crate) async fn require(
        &self,
        state: &AppState,
        action: Action,
    ) -> Result<(), ServingError> {
        if action.allowed(self.0.role) {
            return Ok(());
        }
        let detail = json!({ "action": action.as_str(), "role": self.0.role.as_str() });
        state.audit_as_user(self.0.sub, "refused", detail).await;
        Err(ServingError::Forbidden {
            role: self.0.role.as_str(),
            action: action.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc ", " bEaReR abc"] {
            assert_eq!(bearer_token(header), Some("abc"), "{header:?}");
        }
        for header in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }
}

//! The catalogue: roles, role rules, API tokens, and DHCP lease records.

use super::auth::{allow, Access, Caller};
use super::error::ApiError;
use super::extract::{created, parse_id, parse_mac, parse_role, query_params, ApiJson};
use super::paging::{self, NextLink};
use super::AppState;
use crate::app::{Op, Outcome};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cosm_wire::{
    CreateToken, CreatedToken, ErrorBody, Lease, LeaseState, Role, RoleSpec, Rule, RuleSpec,
    SetInstallMethod, TokenInfo,
};
use std::collections::HashMap;

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route(
            "/api/v1/roles",
            allow(Read, get(list_roles)).merge(allow(Admin, post(create_role))),
        )
        .route(
            "/api/v1/roles/{name}",
            allow(Read, get(show_role)).merge(allow(Admin, delete(delete_role))),
        )
        .route(
            "/api/v1/roles/{name}/install",
            allow(Admin, axum::routing::put(set_install_method)),
        )
        .route(
            "/api/v1/rules",
            allow(Read, get(list_rules)).merge(allow(Admin, post(create_rule))),
        )
        .route(
            "/api/v1/rules/{id}",
            allow(Read, get(show_rule)).merge(allow(Admin, delete(delete_rule))),
        )
        .route("/api/v1/leases", allow(Read, get(list_leases)))
        .route(
            "/api/v1/tokens",
            allow(Admin, get(list_tokens).post(create_token)),
        )
        .route("/api/v1/tokens/{id}", allow(Admin, delete(delete_token)))
}

/// All roles, by name, one page at a time (`Link` rel="next" while more follow).
#[utoipa::path(get, path = "/api/v1/roles", tag = "roles",
    params(
           ("limit" = Option<usize>, Query, description = "records per page (1-1000, default 500)"),
           ("cursor" = Option<String>, Query, description = "where the previous page ended (from its Link header)")),
    responses((status = 200, body = [Role], headers(("link" = String, description = "`<URL>; rel=\"next\"` while more follow"))), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_roles(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query_params(&q, &["limit", "cursor"])?;
    let limit = paging::limit(&q, paging::DEFAULT_LIMIT, paging::MAX_LIMIT)?;
    let after = paging::cursor_name(&q)?;
    paging::answer(
        &state,
        NextLink::new("/api/v1/roles", &q),
        move |store| store.roles_page(after.as_deref(), limit),
        |rs: &[Role]| rs.last().map(|r| paging::name_cursor(r.name.as_str())),
    )
    .await
}

/// Define a role.
#[utoipa::path(post, path = "/api/v1/roles", tag = "roles", request_body = RoleSpec,
    responses((status = 201, body = Role), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_role(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<RoleSpec>,
) -> Result<Response, ApiError> {
    let Outcome::Role(role) = state.app.store.run(Op::CreateRole(spec)).await? else {
        unreachable!("CreateRole produces a role")
    };
    tracing::info!(caller = %caller.name, role = %role.name, "role created");
    Ok(created(format!("/api/v1/roles/{}", role.name), role))
}

/// One role.
#[utoipa::path(get, path = "/api/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "role name")),
    responses((status = 200, body = Role), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn show_role(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Role>, ApiError> {
    let name = parse_role(&name)?;
    state.app.store.role(&name)?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("role {name} not found"),
        )
    })
}

/// Delete an operator-defined role that no machine and no rule uses.
#[utoipa::path(delete, path = "/api/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "role name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn delete_role(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = parse_role(&name)?;
    state.app.store.run(Op::DeleteRole(name.clone())).await?;
    tracing::info!(caller = %caller.name, role = %name, "role deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// How a role's machines are installed: `kickstart`, `image`, or `null` (automatic: by
/// image when the repository has an image for the role, else by kickstart).
#[utoipa::path(put, path = "/api/v1/roles/{name}/install", tag = "roles",
    params(("name" = String, Path, description = "role name")),
    request_body = SetInstallMethod,
    responses((status = 200, body = Role), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn set_install_method(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetInstallMethod>,
) -> Result<Json<Role>, ApiError> {
    let role = parse_role(&name)?;
    let op = Op::SetInstallMethod {
        role: role.clone(),
        method: body.method,
    };
    let Outcome::Role(r) = state.app.store.run(op).await? else {
        unreachable!("SetInstallMethod gives a role")
    };
    let method = r.install.map_or("automatic".to_string(), |m| m.to_string());
    tracing::info!(caller = %caller.name, %role, %method, "install method set");
    Ok(Json(r))
}

/// Role rules, in evaluation order, one page at a time (`Link` rel="next" while more
/// follow).
#[utoipa::path(get, path = "/api/v1/rules", tag = "rules",
    params(
           ("limit" = Option<usize>, Query, description = "records per page (1-1000, default 500)"),
           ("cursor" = Option<String>, Query, description = "where the previous page ended (from its Link header)")),
    responses((status = 200, body = [Rule], headers(("link" = String, description = "`<URL>; rel=\"next\"` while more follow"))), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_rules(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query_params(&q, &["limit", "cursor"])?;
    let limit = paging::limit(&q, paging::DEFAULT_LIMIT, paging::MAX_LIMIT)?;
    let after = paging::cursor_rule(&q)?;
    paging::answer(
        &state,
        NextLink::new("/api/v1/rules", &q),
        move |store| store.rules_page(after, limit),
        |rs: &[Rule]| rs.last().map(|r| paging::rule_cursor(r.priority, r.id)),
    )
    .await
}

/// Add a role rule.
#[utoipa::path(post, path = "/api/v1/rules", tag = "rules", request_body = RuleSpec,
    responses((status = 201, body = Rule), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn create_rule(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<RuleSpec>,
) -> Result<Response, ApiError> {
    let Outcome::Rule(rule) = state.app.store.run(Op::CreateRule(spec)).await? else {
        unreachable!("CreateRule produces a rule")
    };
    tracing::info!(caller = %caller.name, rule = rule.id, role = %rule.role, "rule created");
    Ok(created(format!("/api/v1/rules/{}", rule.id), rule))
}

/// One rule.
#[utoipa::path(get, path = "/api/v1/rules/{id}", tag = "rules",
    params(("id" = u64, Path, description = "rule id")),
    responses((status = 200, body = Rule), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn show_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    let id = parse_id(&id)?;
    state.app.store.rule(id)?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("rule {id} not found"),
        )
    })
}

/// Delete a rule.
#[utoipa::path(delete, path = "/api/v1/rules/{id}", tag = "rules",
    params(("id" = u64, Path, description = "rule id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn delete_rule(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.app.store.run(Op::DeleteRule(id)).await?;
    tracing::info!(caller = %caller.name, rule = id, "rule deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// DHCP lease records (bound, released, declined), by address, one page at a time
/// (`Link` rel="next" while more follow).
#[utoipa::path(get, path = "/api/v1/leases", tag = "dhcp",
    params(("mac" = Option<String>, Query, description = "only this MAC's lease"),
           ("state" = Option<String>, Query, description = "bound, released or declined"),
           ("limit" = Option<usize>, Query, description = "records per page (1-1000, default 500)"),
           ("cursor" = Option<String>, Query, description = "where the previous page ended (from its Link header)")),
    responses((status = 200, body = [Lease], headers(("link" = String, description = "`<URL>; rel=\"next\"` while more follow"))), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn list_leases(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query_params(&q, &["mac", "state", "limit", "cursor"])?;
    let mac = q.get("mac").map(|m| parse_mac(m)).transpose()?;
    let st = q
        .get("state")
        .map(|s| {
            serde_json::from_value::<LeaseState>(serde_json::Value::String(s.clone())).map_err(
                |_| {
                    ApiError::field(
                        StatusCode::BAD_REQUEST,
                        "state",
                        format!("{s:?} is not one of bound, released, declined"),
                    )
                },
            )
        })
        .transpose()?;
    let limit = paging::limit(&q, paging::DEFAULT_LIMIT, paging::MAX_LIMIT)?;
    let after = paging::cursor_u32(&q)?.map(std::net::Ipv4Addr::from);
    paging::answer(
        &state,
        NextLink::new("/api/v1/leases", &q),
        move |store| store.leases_page(mac, st, after, limit),
        |ls: &[Lease]| ls.last().map(|l| paging::u32_cursor(u32::from(l.ip))),
    )
    .await
}

/// API tokens (admin only), by id, one page at a time (`Link` rel="next" while more
/// follow). Secrets are never listed.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    params(
           ("limit" = Option<usize>, Query, description = "records per page (1-1000, default 500)"),
           ("cursor" = Option<String>, Query, description = "where the previous page ended (from its Link header)")),
    responses((status = 200, body = [TokenInfo], headers(("link" = String, description = "`<URL>; rel=\"next\"` while more follow"))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query_params(&q, &["limit", "cursor"])?;
    let limit = paging::limit(&q, paging::DEFAULT_LIMIT, paging::MAX_LIMIT)?;
    let after = paging::cursor_u64(&q)?;
    paging::answer(
        &state,
        NextLink::new("/api/v1/tokens", &q),
        move |store| store.tokens_page(after, limit),
        |ts: &[TokenInfo]| ts.last().map(|t| paging::u64_cursor(t.id)),
    )
    .await
}

/// Create an API token (admin only). The answer is the only time its secret is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_token(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    let name = spec.name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
            "a token name of 1-64 characters is required",
        ));
    }
    if spec.scope == cosm_wire::Scope::Agent {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scope",
            "agent credentials are issued to machines when they enrol; create an `enroll` token for them",
        ));
    }
    let (info, token) = state.app.create_token(name, spec.scope).await?;
    tracing::info!(caller = %caller.name, token = info.id, name = %info.name, scope = ?info.scope, "API token created");
    Ok(created(
        format!("/api/v1/tokens/{}", info.id),
        CreatedToken { info, token },
    ))
}

/// Revoke an API token (admin only). The caller's own token can be revoked too.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = u64, Path, description = "token id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn delete_token(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.app.store.run(Op::DeleteToken(id)).await?;
    // Console sessions opened with it end with it.
    state.app.sessions.close_token(id);
    tracing::info!(caller = %caller.name, caller_token = caller.token_id, token = id, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

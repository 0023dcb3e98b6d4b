//! `POST /2023-03-30/functions`

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{ApiError, FunctionView, JsonBody};
use crate::accel::Accelerator;
use crate::model::{now, Function, FunctionInput};
use crate::AppState;

pub(super) async fn create_function(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<FunctionInput>,
) -> Result<(StatusCode, Json<FunctionView>), ApiError> {
    let (spec, reference) = input.validate()?.into_new_spec()?;
    let name = spec.function_name.clone();
    // Checked before the registry round trip, which can be slow; the insert checks again.
    if state.store.function_exists(&name).await? {
        return Err(ApiError::FunctionAlreadyExists(name));
    }
    // The function's own credentials, if it has some (an unknown credential name is a 400).
    let own = state
        .access
        .client_for(&spec.custom_container_config, &reference)?;
    let image = state.images.pin(&reference, own.as_ref()).await?;
    let t = now();
    let acceleration = Accelerator::initial_status(spec.custom_container_config.acceleration_type);
    let function = Function {
        function_id: uuid::Uuid::new_v4().to_string(),
        spec,
        image,
        acceleration,
        created_time: t,
        last_modified_time: t,
        serving: None,
        trace: None,
    };
    state.store.create_function(function.clone()).await?;
    if function.acceleration.is_some() && state.accelerate {
        state.accel.submit(
            name.clone(),
            function.image.clone(),
            function.spec.custom_container_config.clone(),
        );
    }
    tracing::info!(function = %name, image = %function.image.reference, "created function");
    Ok((StatusCode::CREATED, Json(FunctionView::from(&function))))
}

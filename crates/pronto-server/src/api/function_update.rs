//! `PUT /2023-03-30/functions/{functionName}`: a partial update; fields not given keep their
//! values. Giving `customContainerConfig.image` re-resolves it, even when unchanged (a moved tag
//! is picked up that way).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;

use super::{function_name, ApiError, FunctionView, JsonBody};
use crate::accel::Accelerator;
use crate::model::{now, AccelerationStatus, FunctionInput, LATEST};
use crate::AppState;

pub(super) async fn update_function(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(input): JsonBody<FunctionInput>,
) -> Result<Json<FunctionView>, ApiError> {
    let name = function_name(path)?;
    let patch = input.validate()?;
    // The name is the key; repeating it is allowed (a client may send a whole spec back).
    if let Some(given) = &patch.function_name {
        if *given != name {
            return Err(ApiError::Rename {
                current: name,
                given: given.clone(),
            });
        }
    }
    // 404 before the registry round trip.
    let stored = state.store.get_function(&name).await?;
    // The registry settings the function will have: checked now (an unknown credential name
    // is a 400), and the new image, if any, pinned with them.
    let mut after = stored.spec.clone();
    patch.clone().apply_to(&mut after);
    let reference = patch
        .image
        .as_ref()
        .map_or(&stored.image.reference, |i| &i.reference);
    let own = state
        .access
        .client_for(&after.custom_container_config, reference)?;
    let pinned = match &patch.image {
        Some(image) => Some(state.images.pin(&image.reference, own.as_ref()).await?),
        None => None,
    };
    let accelerate = state.accelerate;
    let function = state
        .store
        .update_function(&name, move |f| {
            let live = f.live().clone();
            let was = f.spec.custom_container_config.acceleration_type;
            patch.apply_to(&mut f.spec);
            let now_type = f.spec.custom_container_config.acceleration_type;
            let new_image = pinned
                .as_ref()
                .is_some_and(|p| p.manifest_digest != f.image.manifest_digest);
            if let Some(image) = pinned {
                f.image = image;
            }
            // A new image (or acceleration switched on) starts over; switched off, it is gone.
            if new_image || was != now_type || f.acceleration.is_none() {
                f.acceleration = Accelerator::initial_status(now_type);
            }
            f.last_modified_time = now();
            // While the new configuration's acceleration prepares, the one before keeps
            // serving (see `releases`); otherwise the new one serves now.
            let preparing =
                f.acceleration.as_ref().map(|a| a.status) == Some(AccelerationStatus::Preparing);
            f.serving = (preparing && accelerate).then(|| Box::new(live));
        })
        .await?;
    if function.acceleration.as_ref().map(|a| a.status) == Some(AccelerationStatus::Preparing)
        && state.accelerate
    {
        state.accel.submit(
            name.clone(),
            function.image.clone(),
            function.spec.custom_container_config.clone(),
        );
    }
    if !function.update_in_progress() {
        // Instances of the old settings take no new requests; idle ones stop now.
        state.pool.retire_track(&name, LATEST);
    }
    state.provision_kick.notify_one();
    tracing::info!(function = %name, image = %function.image.reference, "updated function");
    let function = state.store.with_trace(function).await?;
    Ok(Json(FunctionView::from(&function)))
}

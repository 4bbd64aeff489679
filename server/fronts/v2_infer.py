"""One Open Inference Protocol inference over the data plane, for every v2 front: the encoder,
decoder or sampler role of a model, from checked input arrays and request parameters to output
arrays and response parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from server.dataplane.plane import DataPlane
from server.fronts.v2_models import DECODER, ENCODER, Signature
from server.fronts.v2_tensors import bool_parameter, string_parameter
from server.inference.served_model import ServedModel
from server.repository import PRIOR_STANDARD_NORMAL

Arrays = dict[str, np.ndarray]


async def infer(
    plane: DataPlane,
    model: ServedModel,
    v2_name: str,
    sig: Signature,
    inputs: Arrays,
    parameters: Mapping[str, Any],
    kinds: Mapping[str, str] | None = None,
) -> tuple[Arrays, dict[str, Any]]:
    """(outputs by name, response parameters). `parameters` holds the request's parameter values;
    `kinds` names each parameter type in the front's words (e.g. bool -> 'bool (bool_param)').

    Parameters: the encoder's `clamp` (bool: clip images into [0, 1], vae.v1 Encode's flag); the
    sampler's `prior` (string: the prior to draw from, vae.v1 Sample's `prior`). The sampler answers
    with the parameter `seed`, the seed it used, so a draw can be repeated.
    """
    kinds = kinds or {}
    if sig.role == DECODER:
        result = await plane.decode(model, inputs["latent"], inputs.get("label", ()))
        return {"image": result.images}, {}
    if sig.role == ENCODER:
        clamp = False
        if "clamp" in parameters:
            how = kinds.get("bool", "bool")
            clamp = bool_parameter(v2_name, "clamp", parameters["clamp"], how)
        encoded = await plane.encode(model, inputs["image"], inputs.get("label", ()), clamp=clamp)
        outputs = {"mean": encoded.mean}
        if encoded.log_variance is not None:
            outputs["log_variance"] = encoded.log_variance
        return outputs, {}
    # The sampler: vae.v1 Sample through the same DataPlane.sample, so a seed gives the same images.
    prior = PRIOR_STANDARD_NORMAL
    if "prior" in parameters:
        how = kinds.get("string", "string")
        prior = string_parameter(v2_name, "prior", parameters["prior"], model.metadata.priors, how)
    seed, temperature, label = inputs.get("seed"), inputs.get("temperature"), inputs.get("label")
    generated = await plane.sample(
        model,
        int(inputs["count"][0]),
        seed=None if seed is None else int(seed[0]),
        temperature=0.0 if temperature is None else float(temperature[0]),
        label=None if label is None else int(label[0]),
        prior=prior,
    )
    return {"image": generated.images, "latent": generated.latents}, {"seed": generated.seed}

"""One pipeline object serves overlapping calls: each call keeps its reference tokens, scheduler state and settings."""

import threading

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from helpers import load_input


SIZE, STEPS = 64, 4
CALLS = {  # different faces, settings (one with guidance, one without: other UNet batches) and seeds
    "A": dict(anonymization_degree=1.25, guidance_scale=4.0, seed=0),
    "B": dict(anonymization_degree=0.5, guidance_scale=1.0, seed=1),
}


def call(pipe, face: str, callback=None) -> np.ndarray:
    settings = dict(CALLS[face])
    generator = torch.Generator().manual_seed(settings.pop("seed"))
    return pipe(
        load_input(face),
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        output_type="np",
        generator=generator,
        callback_on_step_end=callback,
        **settings,
    ).images


def test_two_threads_on_one_pipeline_give_what_each_call_gives_alone(fresh_pipeline):
    # A multistep scheduler keeps the previous steps' outputs: shared, it would mix the two calls.
    pipe = fresh_pipeline
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    alone = {face: call(pipe, face) for face in CALLS}
    assert np.abs(alone["A"] - alone["B"]).max() > 1e-2

    # Both calls wait for each other after every step, so both are inside their denoising loops at once, with
    # the settings and reference tokens of the other call live at the same time.
    barrier = threading.Barrier(len(CALLS), timeout=120)
    settings_seen, results, errors = {face: [] for face in CALLS}, {}, []

    def run(face: str) -> None:
        def in_lockstep(pipe, step, timestep, callback_kwargs):
            settings_seen[face].append((pipe.guidance_scale, pipe.anonymization_degree))
            barrier.wait()
            return {}

        try:
            results[face] = call(pipe, face, in_lockstep)
        except BaseException as error:  # reported below, with the other thread released
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(face,)) for face in CALLS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads)

    for face, settings in CALLS.items():
        np.testing.assert_array_equal(results[face], alone[face])  # bitwise
        assert settings_seen[face] == [(settings["guidance_scale"], settings["anonymization_degree"])] * STEPS


def test_calls_leave_the_unet_as_they_found_it(fresh_pipeline):
    """While calls run the UNet carries the reference processors; once the last overlapping call ends, the ones it
    had before are back (here diffusers' own), whatever order the calls end in."""
    pipe = fresh_pipeline
    before = pipe.unet.attn_processors
    inside = []
    first_inside, second_done = threading.Event(), threading.Event()

    def first(pipe, step, timestep, callback_kwargs):
        if step == 0:
            first_inside.set()
            assert second_done.wait(timeout=120)  # the second call starts and ends while this one runs
            inside.append(pipe.unet.attn_processors)
        return {}

    thread = threading.Thread(target=lambda: call(pipe, "A", first))
    thread.start()
    assert first_inside.wait(timeout=120)
    call(pipe, "B")
    second_done.set()
    thread.join(timeout=300)
    assert not thread.is_alive()
    (during,) = inside
    assert any(during[k] is not before[k] for k in before)  # ours, still installed after the second call ended
    after = pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)


@pytest.mark.parametrize("face", list(CALLS))
def test_properties_describe_the_calling_threads_call(tiny_pipeline, face):
    call(tiny_pipeline, face)
    assert tiny_pipeline.guidance_scale == CALLS[face]["guidance_scale"]
    assert tiny_pipeline.num_timesteps == STEPS
    seen = []
    thread = threading.Thread(target=lambda: seen.append(hasattr(tiny_pipeline, "guidance_scale")))
    thread.start()
    thread.join()
    assert seen == [False]  # another thread has made no call

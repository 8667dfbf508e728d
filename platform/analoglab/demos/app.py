"""The public demo as a Gradio app: :func:`build_app` and :func:`serve`.

Tabs: Talk, Look inside, Steer, Fidelity, Transfer board (see ``docs/demo.md``). Every handler
checks its inputs against :class:`~analoglab.demos.limits.Limits` itself (a request can skip
the widgets) and turns every failure into a ``gr.Error`` with a sentence: a visitor never sees
a traceback or a path (the real error goes to the server's log). Gradio's queue works on
``Limits.concurrency`` requests at once and holds at most ``Limits.queue_size`` more.

The view's state — tab, analog, prompt, vector, strength, seed — is kept in the page's query
string (``?tab=steer&analog=…``) as it changes, and restored when a page opens with one, so
a link shows what its sender saw.

API names (for ``gradio_client``): ``/card``, ``/talk`` (streamed), ``/look``, ``/vectors``,
``/steer``, ``/fidelity``, ``/board`` (the table, the scores chart, the profile picker),
``/profiles`` (a released check's layer profiles on relative depth), ``/restore``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from analoglab.config import Settings
from analoglab.demos.engine import Analogs, Sampling, Vector
from analoglab.demos.limits import DemoInputError, Limits, check_int, check_number, check_prompt
from analoglab.demos.published import CACHE_SECONDS, Published
from analoglab.demos.views import (
    ALL,
    BOARD_HEADERS,
    MOVED_HEADERS,
    board_filters,
    board_rows,
    card_markdown,
    checked_sentence,
    fidelity_table,
    lens_figure,
    moved_rows,
    norms_figure,
    profiles_figure,
    row_label,
    scores_figure,
)
from analoglab.demos.views import shown as shown_checks
from analoglab.errors import AnalogLabError

log = logging.getLogger("analoglab.demos")

TABS = ("talk", "look", "steer", "fidelity", "board")
DEFAULT_PROMPT = "the cake was"
INTRO = """\
# Analog Lab: meet the analogs

An **analog** is a small, openly released model that a lab distilled from its private
**frontier** model, so that anyone can study it: what you find inside an analog can then be
checked on the frontier itself, which stays with the lab. Pick an analog, write a prompt, and
talk to it, look inside it, or steer it. The address bar always holds this view: copy it to
share what you see.
"""

LENS_SENTENCE = (
    "Each row reads the model's guess for the next token straight off its residual stream after "
    "that block (the *logit lens*); the last row is the model's own answer. Darker cells are "
    "surer guesses: watch where the right answer first appears."
)
NORMS_SENTENCE = (
    "How large the residual stream is after each block, averaged over the prompt's tokens: "
    "each block adds its part to the stream, and the norm shows how much the stream grows."
)
SCORES_SENTENCE = (
    "Each row is one released check: the dot is its transfer score, the bar the range the score "
    "is 95% sure to lie in, and its colour the verdict. A verdict only says *transfers* when the "
    "whole bar clears the 0.6 line; a bar across a line is *inconclusive*."
)
PROFILES_SENTENCE = (
    "The same measurement after each block of the analog and of the frontier, on one axis from "
    "the first block (0) to the last (1), so models of different depths line up: where the "
    "curves peak at the same depth, the finding sits at the same place in both."
)
STEER_SENTENCE = (
    "Both completions use the same prompt and the same seed; only the steering vector differs. "
    "The table lists the next tokens whose probability the vector moved most."
)


def gradio() -> Any:
    """The ``gradio`` module (imported when a demo is built; it is the ``demo`` extra)."""
    try:
        return importlib.import_module("gradio")
    except ImportError as exc:
        raise AnalogLabError("the demo needs Gradio: pip install 'analoglab[demo]'") from exc


@dataclass
class Demo:
    """What the handlers share: the analogs, what was published, the limits."""

    analogs: Analogs
    published: Published
    limits: Limits
    rebuilt: dict[tuple[str, str, int], Any] = field(default_factory=dict)

    # -- inputs ----------------------------------------------------------------------------

    def sampling(
        self, max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any, seed: Any
    ) -> Sampling:
        lim = self.limits
        return Sampling(
            max_new_tokens=check_int("max new tokens", max_new_tokens, (1, lim.max_new_tokens)),
            temperature=check_number("temperature", temperature, lim.temperature),
            top_p=check_number("top-p", top_p, lim.top_p),
            top_k=check_int("top-k", top_k, lim.top_k),
            seed=check_int("seed", seed, (0, lim.max_seed)),
        )

    def vectors(self, analog: str) -> list[Vector]:
        """The steering vectors offered on ``analog``: published ones, then the demo's."""
        self.analogs.card(analog)  # refuses an unknown analog
        found: list[Vector] = []
        for p in self.published.steering():
            if p.analog != analog:
                continue
            loaded = self.analogs.model(analog)
            from analoglab.interventions import layout_of

            block = layout_of(loaded.model).block_at_depth(p.best_depth)
            effect = "" if p.effect is None else f", effect {p.effect:+.2f}"
            link = f" ([run]({p.url}))" if p.url else ""
            found.append(
                Vector(
                    key=f"run:{p.run_id}",
                    label=f"published: {p.description[:60]} (run {p.run_id[:8]})",
                    analog=analog,
                    block=block,
                    values=self._published_values(analog, p.run_id, p.pairs, block),
                    source=(
                        f"published by a researcher: MLflow run {p.run_id[:8]}{link} on {analog} "
                        f"(“{p.description}”{effect}), rebuilt here from its {len(p.pairs)} "
                        f"contrast pairs after block {block}"
                    ),
                    checked=checked_sentence(self.published.verdict(p.spec_hash, analog)),
                )
            )
        return [*found, self.analogs.demo_vector(analog)]

    def _published_values(
        self, analog: str, run_id: str, pairs: list[tuple[str, str]], block: int
    ) -> Any:
        """A published vector, rebuilt once per run and block (runs never change)."""
        key = (analog, run_id, block)
        if key not in self.rebuilt:
            self.rebuilt[key] = self.analogs.vector_from_pairs(analog, pairs, block)
        return self.rebuilt[key]

    def vector(self, analog: str, key: Any) -> Vector:
        options = self.vectors(analog)
        for v in options:
            if v.key == key:
                return v
        names = ", ".join(v.key for v in options)
        raise DemoInputError(
            f"there is no steering vector {str(key)[:60]!r} on {analog} (known: {names})"
        )


def _clear(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Handler errors as a ``gr.Error`` with a sentence; never a traceback or a path."""
    gr = gradio()

    def translate(exc: Exception) -> Any:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, DemoInputError):
            return gr.Error(str(exc), print_exception=False)
        log.exception("demo handler %s failed", fn.__name__)
        if isinstance(exc, AnalogLabError):
            return gr.Error(
                "this analog cannot be used right now; the operators have the details",
                print_exception=False,
            )
        return gr.Error("something went wrong on our side; please try again", print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise translate(exc) from None

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise translate(exc) from None

    return call


RESTORED_JS = "() => { window.analoglabRestored = true; }"
URL_JS = """
(analog, prompt, vector, strength, seed) => {
  if (!window.analoglabRestored) return;
  const url = new URL(window.location.href);
  const state = {analog, prompt, vector, strength, seed};
  for (const [k, v] of Object.entries(state)) {
    if (v === null || v === undefined || v === "") url.searchParams.delete(k);
    else url.searchParams.set(k, String(v));
  }
  window.history.replaceState(null, "", url.toString());
}
"""


TAB_JS = """
() => {
  if (!window.analoglabRestored) return;
  const url = new URL(window.location.href);
  url.searchParams.set("tab", %s);
  window.history.replaceState(null, "", url.toString());
}
"""


def build_app(
    settings: Settings,
    *,
    limits: Limits | None = None,
    mlflow_link: str | None = None,
    device: str | None = "cpu",
    preload: bool = True,
    cache_seconds: float = CACHE_SECONDS,
) -> Any:
    """The demo as a ``gr.Blocks``, queue configured; serve it with :func:`serve`.

    ``mlflow_link``: the MLflow UI as visitors reach it, for links to runs (None: no links).
    """
    gr = gradio()
    limits = limits or Limits()
    analogs = Analogs(settings, device=device)
    if preload:
        analogs.preload()
    published = Published(settings, link_base=mlflow_link, cache_seconds=cache_seconds)
    demo = Demo(analogs, published, limits)
    names = analogs.names
    first = names[0] if names else None

    # -- handlers (each checks its own inputs) ---------------------------------------------

    @_clear
    def card(analog: Any) -> str:
        return card_markdown(analogs.card(analog))

    @_clear
    def talk(
        analog: Any,
        prompt: Any,
        max_new_tokens: Any,
        temperature: Any,
        top_p: Any,
        top_k: Any,
        seed: Any,
    ) -> Iterator[str]:
        text = check_prompt(prompt, limits)
        sampling = demo.sampling(max_new_tokens, temperature, top_p, top_k, seed)
        analogs.card(analog)
        yield from analogs.stream(analog, text, sampling)

    @_clear
    def look(analog: Any, prompt: Any) -> tuple[Any, Any]:
        text = check_prompt(prompt, limits)
        analogs.card(analog)
        lens = analogs.lens(analog, text, limits.lens_positions)
        return lens_figure(lens), norms_figure(lens)

    @_clear
    def vectors(analog: Any, wanted: Any = None) -> tuple[Any, str]:
        options = demo.vectors(analog)
        keys = [v.key for v in options]
        value = wanted if wanted in keys else keys[0]
        return (
            gr.Dropdown(choices=[(v.label, v.key) for v in options], value=value),
            _vector_markdown(next(v for v in options if v.key == value)),
        )

    @_clear
    def describe_vector(analog: Any, key: Any) -> str:
        if not key:
            return ""
        return _vector_markdown(demo.vector(analog, key))

    @_clear
    def steer(
        analog: Any, prompt: Any, key: Any, strength: Any, max_new_tokens: Any, seed: Any
    ) -> tuple[str, str, Any]:
        text = check_prompt(prompt, limits)
        scale = check_number("strength", strength, limits.strength)
        sampling = demo.sampling(max_new_tokens, 0.8, 0.95, 40, seed)
        vector = demo.vector(analog, key)
        default = _last(analogs.stream(analog, text, sampling))
        steered = _last(analogs.stream(analog, text, sampling, vector, scale))
        moved = analogs.moved(analog, text, vector, scale)
        return default, steered, gr.Dataframe(value=moved_rows(moved), headers=MOVED_HEADERS)

    @_clear
    def fidelity() -> Any:
        headers, rows = fidelity_table(analogs.cards())
        return gr.Dataframe(value=rows, headers=headers)

    @_clear
    def board(
        lab: Any, frontier: Any, method: Any, verdict: Any
    ) -> tuple[Any, str, Any, Any, Any, Any, Any, Any]:
        rows = demo.published.transfers()
        choices = board_filters(rows)
        picked = {
            "lab": lab,
            "frontier": frontier,
            "method": method,
            "verdict": verdict,
        }
        for name, value in picked.items():
            if not isinstance(value, str) or not value or len(value) > 100:
                picked[name] = ALL
            elif value not in choices[name]:
                choices[name].append(value)  # kept (it matches nothing), as a link may hold it
        shown = board_rows(rows, **{k: str(v) for k, v in picked.items()})
        if demo.published.problem:
            note = f"The board is empty for now: {demo.published.problem}."
        elif not rows:
            note = (
                "No transfer check has been released yet. A transfer check runs a researcher's "
                "experiment on an analog and, through the lab's gated queue, on its frontier; "
                "once the lab releases the frontier's result, the check appears here."
            )
        else:
            note = f"{len(shown)} of {len(rows)} released transfer checks."
        dropdowns = [gr.Dropdown(choices=choices[k], value=picked[k]) for k in picked]
        checks = shown_checks(rows, **{k: str(v) for k, v in picked.items()})
        picker = gr.Dropdown(
            choices=[(row_label(r), r.run_id) for r in checks],
            value=checks[0].run_id if checks else None,
        )
        return (
            gr.Dataframe(value=shown, headers=BOARD_HEADERS),
            note,
            *dropdowns,
            scores_figure(checks),
            picker,
        )

    @_clear
    def profiles(run_id: Any) -> tuple[Any, str]:
        if not isinstance(run_id, str) or not run_id or len(run_id) > 64:
            return None, "Pick a released check above to see its layer profiles."
        found = demo.published.profiles(run_id)
        if found is None:
            raise DemoInputError("no released transfer check has that run id")
        if not found.profiles:
            return profiles_figure(found), (
                "This check's results logged no layer profile (its method measures one number "
                "per model)."
            )
        return profiles_figure(found), PROFILES_SENTENCE

    @_clear
    def restore(search: Any) -> tuple[Any, ...]:
        """The view named in the page's query string (bad values fall back to defaults)."""
        text = search if isinstance(search, str) else ""
        params = dict(urllib.parse.parse_qsl(text.lstrip("?")[:4000]))
        tab = params.get("tab") if params.get("tab") in TABS else "talk"
        analog = params.get("analog") if params.get("analog") in names else first
        prompt = params.get("prompt", DEFAULT_PROMPT)
        if not isinstance(prompt, str) or len(prompt) > limits.max_prompt_chars:
            prompt = DEFAULT_PROMPT
        strength = _param(params.get("strength"), limits.strength, 4.0)
        seed = int(_param(params.get("seed"), (0, limits.max_seed), 0.0))
        vector_update, vector_text = (
            (gr.Dropdown(), "") if analog is None else vectors(analog, params.get("vector"))
        )
        return (
            gr.Tabs(selected=tab),
            analog,
            prompt,
            vector_update,
            vector_text,
            strength,
            seed,
        )

    # -- layout ----------------------------------------------------------------------------

    lim = limits
    with gr.Blocks(title="Analog Lab demo", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        if not names:
            gr.Markdown(
                "**No analogs are installed yet.** An operator adds them with "
                "`analoglab models install` or builds the demo ones with "
                "`analoglab foundry build`."
            )
        with gr.Row():
            with gr.Column(scale=3):
                analog_in = gr.Dropdown(choices=names, value=first, label="Analog")
                prompt_in = gr.Textbox(
                    value=DEFAULT_PROMPT,
                    label=f"Prompt (at most {lim.max_prompt_chars} characters)",
                    max_length=lim.max_prompt_chars,
                    lines=2,
                )
                seed_in = gr.Number(
                    value=0,
                    label="Seed (the same seed gives the same completion)",
                    precision=0,
                    minimum=0,
                    maximum=lim.max_seed,
                )
            with gr.Column(scale=2):
                card_out = gr.Markdown(card(first) if first else "")
        with gr.Tabs(selected="talk") as tabs:
            with gr.Tab("Talk", id="talk") as talk_tab:
                with gr.Row():
                    tokens_in = gr.Slider(
                        1,
                        lim.max_new_tokens,
                        value=lim.default_new_tokens,
                        step=1,
                        label="New tokens",
                    )
                    temperature_in = gr.Slider(
                        *lim.temperature,
                        value=0.8,
                        step=0.05,
                        label="Temperature (0 = always the likeliest)",
                    )
                    top_p_in = gr.Slider(*lim.top_p, value=0.95, step=0.05, label="Top-p")
                    top_k_in = gr.Slider(*lim.top_k, value=40, step=1, label="Top-k (0 = off)")
                talk_button = gr.Button("Complete", variant="primary", elem_id="talk-button")
                completion_out = gr.Textbox(
                    label="The analog continues", lines=4, interactive=False, elem_id="completion"
                )
            with gr.Tab("Look inside", id="look") as look_tab:
                look_button = gr.Button("Look inside", variant="primary", elem_id="look-button")
                lens_out = gr.Plot(label="Logit lens: the top next token after each block")
                gr.Markdown(LENS_SENTENCE)
                norms_out = gr.Plot(label="Activation norms per block")
                gr.Markdown(NORMS_SENTENCE)
            with gr.Tab("Steer", id="steer") as steer_tab:
                with gr.Row():
                    # choices vary per analog; steer() checks the value itself
                    vector_in = gr.Dropdown(
                        choices=[], label="Steering vector", scale=2, allow_custom_value=True
                    )
                    strength_in = gr.Slider(
                        *lim.strength, value=4.0, step=0.5, label="Strength", scale=1
                    )
                vector_md = gr.Markdown()
                steer_button = gr.Button("Steer", variant="primary", elem_id="steer-button")
                with gr.Row():
                    default_out = gr.Textbox(
                        label="Default", lines=4, interactive=False, elem_id="default"
                    )
                    steered_out = gr.Textbox(
                        label="Steered", lines=4, interactive=False, elem_id="steered"
                    )
                moved_out = gr.Dataframe(
                    headers=MOVED_HEADERS, label="Next tokens moved most", interactive=False
                )
                gr.Markdown(STEER_SENTENCE)
            with gr.Tab("Fidelity", id="fidelity") as fidelity_tab:
                gr.Markdown(
                    "How faithful each analog is to its frontier, from the cards the labs "
                    "published: **KL** is how far the analog's next-token guesses are from the "
                    "frontier's (lower is closer), **top-1 agreement** how often both pick the "
                    "same next token, **CKA** how alike their insides are (the residual streams "
                    "at the same relative depth, 1 for alike up to rotation and scale), and each "
                    "task's accuracy for the analog and its frontier, with how often the two "
                    "give the same answer."
                )
                fidelity_out = gr.Dataframe(interactive=False)
            with gr.Tab("Transfer board", id="board") as board_tab:
                gr.Markdown(
                    "Released **transfer checks**: an experiment run on an analog and, through "
                    "the lab's gated queue, on its frontier. The verdict says whether the "
                    "finding held on the frontier; the score (0–1) sums up how well its parts "
                    "agree."
                )
                with gr.Row():
                    lab_in = gr.Dropdown(
                        choices=[ALL], value=ALL, label="Lab", allow_custom_value=True
                    )
                    frontier_in = gr.Dropdown(
                        choices=[ALL], value=ALL, label="Frontier", allow_custom_value=True
                    )
                    method_in = gr.Dropdown(
                        choices=[ALL], value=ALL, label="Method", allow_custom_value=True
                    )
                    verdict_in = gr.Dropdown(
                        choices=[ALL], value=ALL, label="Verdict", allow_custom_value=True
                    )
                board_note = gr.Markdown()
                board_out = gr.Dataframe(
                    headers=BOARD_HEADERS, interactive=False, datatype="markdown"
                )
                scores_out = gr.Plot(label="Transfer scores with their 95% intervals")
                gr.Markdown(SCORES_SENTENCE)
                profile_in = gr.Dropdown(
                    choices=[], value=None, label="Layer profiles of", allow_custom_value=True
                )
                profile_out = gr.Plot(label="The analog's and the frontier's layer profiles")
                profile_note = gr.Markdown()

        # -- events ------------------------------------------------------------------------

        talk_inputs = [analog_in, prompt_in, tokens_in, temperature_in, top_p_in, top_k_in, seed_in]
        talk_button.click(talk, talk_inputs, completion_out, api_name="talk")
        prompt_in.submit(talk, talk_inputs, completion_out, api_name=False)
        look_button.click(look, [analog_in, prompt_in], [lens_out, norms_out], api_name="look")
        look_tab.select(look, [analog_in, prompt_in], [lens_out, norms_out], api_name=False)
        analog_in.change(card, analog_in, card_out, api_name="card")
        analog_in.change(vectors, analog_in, [vector_in, vector_md], api_name="vectors")
        vector_in.change(describe_vector, [analog_in, vector_in], vector_md, api_name=False)
        steer_button.click(
            steer,
            [analog_in, prompt_in, vector_in, strength_in, tokens_in, seed_in],
            [default_out, steered_out, moved_out],
            api_name="steer",
        )
        board_inputs = [lab_in, frontier_in, method_in, verdict_in]
        board_outputs = [board_out, board_note, *board_inputs, scores_out, profile_in]
        for dropdown in board_inputs:
            dropdown.input(board, board_inputs, board_outputs, api_name=False).then(
                profiles, profile_in, [profile_out, profile_note], api_name=False
            )
        profile_in.input(profiles, profile_in, [profile_out, profile_note], api_name="profiles")

        for tab, tab_id in (
            (talk_tab, "talk"),
            (look_tab, "look"),
            (steer_tab, "steer"),
            (fidelity_tab, "fidelity"),
            (board_tab, "board"),
        ):
            tab.select(None, None, None, js=TAB_JS % json.dumps(tab_id), api_name=False)
        url_inputs = [analog_in, prompt_in, vector_in, strength_in, seed_in]
        for component in url_inputs:
            component.change(None, url_inputs, None, js=URL_JS, api_name=False)

        # The page's own query string, read by the browser before anything changes it, is
        # the input of /restore; the address bar follows the view only once it is restored.
        search_in = gr.Textbox(visible=False)
        app.load(
            restore,
            search_in,
            [tabs, analog_in, prompt_in, vector_in, vector_md, strength_in, seed_in],
            js="() => [window.location.search]",
            api_name="restore",
        ).then(None, None, None, js=RESTORED_JS, api_name=False).then(
            fidelity, None, fidelity_out, api_name="fidelity"
        ).then(board, board_inputs, board_outputs, api_name="board").then(
            profiles, profile_in, [profile_out, profile_note], api_name=False
        )

    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    app.analogs = analogs  # for tests and the benchmark: the models it serves
    return app


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    root_path: str = "",
    block: bool = True,
) -> Any:
    """Serve ``app`` (from :func:`build_app`) on ``host:port``; ``root_path`` is the prefix it
    is reached under behind a proxy (``/services/demo``)."""
    return app.launch(
        server_name=host,
        server_port=port,
        root_path=root_path.rstrip("/") or None,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=True,
        footer_links=["api"],
        ssr_mode=False,
    )


def _vector_markdown(vector: Vector) -> str:
    return f"{vector.source}.\n\n{vector.checked}"


def _last(chunks: Iterator[str]) -> str:
    last = ""
    for chunk in chunks:
        last = chunk
    return last


def _param(value: Any, bounds: tuple[float, float], default: float) -> float:
    try:
        return check_number("value", value, bounds)
    except DemoInputError:
        return default

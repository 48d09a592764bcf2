"""A recipe: one YAML file that describes a whole method (candidate sources, ranker, confidence region).

`geoloc predict --recipe` reads it; every stage it names runs through the same library
functions as the stage's own command. Paths in the file are relative to the file; a
backbone or base model is a path when a file or folder of that name sits beside the
recipe (or it starts with ./, ../ or /), else a hub id. A mistake is reported with the
file's line that holds it (`RecipeError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from geoloc.candidates import SOURCES
from geoloc.errors import InputError


class RecipeError(InputError):
    """The recipe cannot be used; the message names the file, the line and the setting."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeoClipSource(_Settings):
    model: Path | None = None
    """A GeoCLIP release (`geoloc geoclip train`), as `geoloc predict --model`; None: the published GeoCLIP."""
    backbone: str | None = None
    """As `geoloc predict --backbone` (default: the release's, else CLIP ViT-L/14)."""
    top_k: int = Field(10, ge=1)


class RetrievalSource(_Settings):
    index: Path
    """A `geoloc index build` folder."""
    backbone: str | None = None
    """Defaults to the one that embedded the gallery (recorded in the index)."""
    k: int = Field(20, ge=1)
    reverse: int = Field(0, ge=0)
    """Also the K gallery photos nearest to the negated query vector (source=reverse)."""


class ClassifierSource(_Settings):
    model: Path
    """A `geoloc classifier train` folder."""
    backbone: str | None = None
    """Defaults to the one the classifier was trained on (recorded in its folder)."""
    top_k: int = Field(5, ge=1)
    nearest: int = Field(5, ge=0)


class ZeroShotSource(_Settings):
    model: str
    base_url: str
    preset: Literal["georanker", "g3"] | None = None
    rag: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0])
    """As `--rag`: 0 the plain prompt, K > 0 G3's prompt naming K retrieval and K reverse neighbours."""
    samples: int | None = Field(None, ge=1)
    answers_per_request: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    max_tokens: int | None = Field(None, ge=1)
    detail: Literal["low", "high", "auto"] | None = None
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    allow_http: bool = False
    """As `--allow-http`: a plain http endpoint beyond this machine."""
    cache: Path | None = None
    """The answers' SQLite cache; default `$XDG_CACHE_HOME/geoloc/zeroshot.sqlite`."""


class PlonkSource(_Settings):
    model_config = ConfigDict(extra="allow", frozen=True)


class Sources(_Settings):
    """The candidate sources, at most one of each kind, in the order written (the order `ranker: none` reads)."""

    geoclip: GeoClipSource | None = None
    retrieval: RetrievalSource | None = None
    classifier: ClassifierSource | None = None
    zeroshot: ZeroShotSource | None = None
    plonk: PlonkSource | None = None


class NoRanker(_Settings):
    kind: Literal["none"]


class LightRankerSettings(_Settings):
    kind: Literal["light"]
    model: Path
    """A `geoloc ranker train --light` folder; the query photos are embedded with its backbone."""
    gallery_embeddings: Path | None = None
    gallery_table: Path | None = None
    text_embeddings: Path | None = None
    top: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: {"retrieval": 10, "zeroshot": 5})


class GeoRankerSettings(_Settings):
    kind: Literal["georanker"]
    adapter: Path
    base: str | None = None
    gallery: Path | None = None
    """Folder or .tar of the gallery photos named by the retrieval candidates' ref_uri."""
    gallery_index: Path | None = None
    top: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: {"retrieval": 10, "zeroshot": 5})
    negatives: int = Field(5, ge=0)
    batch_size: int = Field(8, ge=1)
    shared_prefix: bool = True
    raw_photos: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class Region(_Settings):
    """The answer's confidence radius: GeoCLIP's (the distance holding 68% of its belief), or the candidates'
    (the distance from the answer within which `share` of all candidates lie)."""

    kind: Literal["geoclip", "candidates"] = "candidates"
    share: float = Field(0.68, gt=0, le=1)


class Recipe(_Settings):
    sources: Sources
    ranker: Annotated[NoRanker | LightRankerSettings | GeoRankerSettings, Field(discriminator="kind")] = NoRanker(
        kind="none")
    region: Region = Region()
    device: str = "auto"
    batch_size: int = Field(16, ge=1)
    """Photos per batch in each stage."""
    path: Path = Path("recipe.yaml")
    """The file this recipe was read from (set by `load_recipe`)."""
    order: tuple[str, ...] = ()
    """The sources in the order the file lists them (set by `load_recipe`)."""

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        given = [name for name in Sources.model_fields if getattr(self.sources, name) is not None]
        if not given:
            raise ValueError("name at least one source under sources (geoclip, retrieval, classifier, zeroshot)")
        zeroshot, retrieval = self.sources.zeroshot, self.sources.retrieval
        if zeroshot is not None and max(zeroshot.rag) > 0 and (retrieval is None or retrieval.reverse == 0):
            raise ValueError("sources.zeroshot.rag above 0 names retrieval and reverse neighbours: give "
                             "sources.retrieval with reverse above 0")
        if self.region.kind == "geoclip" and self.sources.geoclip is None:
            raise ValueError("region.kind geoclip needs sources.geoclip")
        if self.ranker.kind in ("light", "georanker"):
            unknown = sorted(set(self.ranker.top) - set(SOURCES))
            if unknown:
                raise ValueError(f"ranker.top names no source {', '.join(unknown)}; sources are {', '.join(SOURCES)}")
        return self

    def source_names(self) -> list[str]:
        """The sources given, in the file's order."""
        return [name for name in self.order if getattr(self.sources, name) is not None]


PATH_FIELDS = {"index", "model", "cache", "gallery", "gallery_index", "gallery_embeddings", "gallery_table",
               "text_embeddings", "adapter"}
MODEL_FIELDS = {"backbone", "base"}


def _plain(node: yaml.Node, where: tuple, lines: dict[tuple, int]) -> Any:
    """The node as plain Python, each setting's line recorded under its path of keys."""
    lines[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        values = {}
        for key, value in node.value:
            name = key.value
            if name in values:
                raise RecipeError(f"line {key.start_mark.line + 1}: {'.'.join(map(str, where + (name,)))} is "
                                  "given twice")
            values[name] = _plain(value, where + (name,), lines)
            lines[where + (name,)] = key.start_mark.line + 1
        return values
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, where + (number,), lines) for number, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _is_path(where: tuple) -> bool:
    """Whether the setting at `where` names a file or folder (the zero-shot `model` is a model's name)."""
    return bool(where) and where[-1] in PATH_FIELDS and where != ("sources", "zeroshot", "model")


def _resolve_paths(values: Any, folder: Path, where: tuple = ()) -> Any:
    """Paths made relative to the recipe's folder; backbones only when they name something there."""
    if isinstance(values, dict):
        return {name: _resolve_paths(value, folder, where + (name,)) for name, value in values.items()}
    if not isinstance(values, str):
        return values
    if _is_path(where):
        return str(folder / Path(values).expanduser())
    if where and where[-1] in MODEL_FIELDS:
        prefix, path = ("g3:", values[3:]) if values.startswith("g3:") else ("", values)
        if path.startswith(("./", "../")) or (folder / path).exists():
            return prefix + str(folder / path)
    return values


def _missing_paths(values: Any, where: tuple = ()):
    """(setting, path) of every file or folder the resolved settings name that does not exist."""
    if isinstance(values, dict):
        for name, value in values.items():
            yield from _missing_paths(value, where + (name,))
    elif _is_path(where) and where[-1] != "cache" and isinstance(values, str) and not Path(values).exists():
        yield where, values


def _line_of(location: tuple, lines: dict[tuple, int]) -> tuple[int | None, str]:
    """The line of the deepest setting an error names, and its dotted name."""
    if location[:1] == ("ranker",) and location[1:2] in (("none",), ("light",), ("georanker",)):
        location = location[:1] + location[2:]  # the union's tag, not a setting
    for cut in range(len(location), -1, -1):
        if location[:cut] in lines:
            return lines[location[:cut]], ".".join(map(str, location)) or "(top)"
    return None, ".".join(map(str, location))


def load_recipe(path: Path, check_paths: bool = True) -> Recipe:
    """The recipe in `path`, validated; RecipeError names the line of any mistake.

    `check_paths`: every model, index and photo folder it names must exist (not the answer
    cache, made on first use); off for a template whose folders are still to be made."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise RecipeError(f"{path}: cannot read the recipe ({error.strerror or error})") from error
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = {} if node is None else _plain(node, (), lines)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from error
    except RecipeError as error:
        raise RecipeError(f"{path}, {error}") from error
    if not isinstance(values, dict):
        raise RecipeError(f"{path}, line 1: a recipe is a mapping with sources, ranker and region")
    order = tuple(values.get("sources", {}) or {}) if isinstance(values.get("sources"), dict) else ()
    resolved = _resolve_paths(values, path.resolve().parent)
    try:
        recipe = Recipe.model_validate({**resolved, "path": path.resolve(), "order": order})
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            line, name = _line_of(problem["loc"], lines)
            message = problem["msg"].removeprefix("Value error, ")
            problems.append(f"{path}, line {line}: {name}: {message}" if line else f"{path}: {name}: {message}")
        raise RecipeError("\n".join(problems)) from error
    if recipe.sources.plonk is not None:
        raise RecipeError(f"{path}, line {lines.get(('sources', 'plonk'))}: sources.plonk: PLONK is not a recipe "
                          "source yet: remove it from the recipe, and run `geoloc candidates plonk` beside it by "
                          "hand (or `geoloc predict --model plonk:ID_OR_DIR` for PLONK alone)")
    missing = list(_missing_paths(resolved)) if check_paths else []
    if missing:
        raise RecipeError("\n".join(f"{path}, line {lines.get(where)}: {'.'.join(where)}: no such file or folder: "
                                     f"{value} (paths are relative to the recipe)" for where, value in missing))
    return recipe


def recipe_identity(recipe: Recipe | BaseModel) -> dict:
    """What makes a recipe's (or one of its parts') answers: its settings, the models it names by identity
    (a folder's files by size and time), the code's versions. Resumable and batch runs key their work by it."""
    from importlib.metadata import version

    from geoloc.resumable import model_identity

    settings = recipe.model_dump(mode="json", exclude={"path"} if isinstance(recipe, Recipe) else None)
    return {"settings": settings, "models": {key: model_identity(value) for key, value in _named_models(settings)},
            "versions": {name: version(name) for name in ("geoloc", "torch", "transformers")}}


def _named_models(values: dict, prefix: str = ""):
    """(dotted setting, value) of every model, index or backbone the settings name."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _named_models(value, f"{prefix}{key}.")
        elif key in MODEL_FIELDS | PATH_FIELDS and isinstance(value, str) and "://" not in value:
            yield prefix + key, value


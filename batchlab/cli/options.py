"""Command-line options derived from the spec fields (spec/fields.py), so that a new field is a
flag of `train`, `sweep` and `infer` without being written out again here; and groups of options
several commands share, reaching each as one object (with_option_group).

Typer reads a command's options from its signature; `with_spec_options` gives the command one
made of the spec's fields followed by the command's own parameters, and passes everything to the
command as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Annotated, Any, Callable, Optional, get_args

import typer
from typer.models import ArgumentInfo

from ..spec.experiment import parse_list
from ..spec.fields import python_type, settings


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def spec_parameters(spec_class: type, lists: bool) -> list[inspect.Parameter]:
    """One keyword parameter per user-set field. With `lists`, fields marked grid take a comma
    list (a string; its default is the field's cli_default, or None = not given) and the others
    one value (default: its cli_default, or None); else each takes one value of its type, defaulting
    to the field's default."""
    parameters = []
    for field, setting in settings(spec_class):
        if not setting.flag:
            continue
        kind = python_type(field)
        flag = flag_name(field.name) + (f"/--no-{field.name.replace('_', '-')}" if kind is bool else "")
        if lists and setting.grid:
            help_text = "Comma list. " + setting.help
            annotation, default = Annotated[Optional[str], typer.Option(flag_name(field.name), help=help_text)], \
                setting.cli_default
        elif lists:  # one value; None = not given (the experiment file's, or the spec's default)
            default = None if setting.cli_default is None else kind(setting.cli_default)
            annotation = Annotated[Optional[kind], typer.Option(flag, help=setting.help)]
        else:
            annotation, default = Annotated[kind, typer.Option(flag, help=setting.help)], field.default
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return parameters


def is_argument(parameter: inspect.Parameter) -> bool:
    """A positional command-line argument (typer.Argument), which stays first."""
    return any(isinstance(meta, ArgumentInfo) for meta in get_args(parameter.annotation)[1:])


def with_spec_options(spec_class: type, lists: bool = False) -> Callable:
    """Decorate a command taking `**fields` plus its own parameters: its options become the spec
    fields' (see spec_parameters), then its own."""
    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        positional = [p for p in own if is_argument(p)]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in positional]
        parameters = positional + spec_parameters(spec_class, lists) + keyword

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return command(*args, **kwargs)

        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer must read the signature above, not the command's own
        return wrapper
    return decorate


def with_option_group(name: str, options: dict[str, Any], build: Callable[[dict[str, Any]], Any]) -> Callable:
    """Decorate a command taking the parameter `name`: in its signature that parameter gives way to
    `options` (parameter name → Annotated type; each defaults to None, "not given"), whose values
    reach the command as one argument, build(values). Options that several commands share (where
    their runs go: cli/app.py) are so written once. Goes below with_spec_options."""
    def decorate(command: Callable) -> Callable:
        parameters = []
        for parameter in inspect.signature(command, eval_str=True).parameters.values():
            if parameter.name == name:
                parameters += [inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=None,
                                                 annotation=annotation) for option, annotation in options.items()]
            elif is_argument(parameter) or parameter.kind is inspect.Parameter.VAR_KEYWORD:
                parameters.append(parameter)
            else:
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        parameters.sort(key=lambda parameter: parameter.kind)  # arguments, options, **fields (stable)

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {option: kwargs.pop(option) for option in options}
            return command(*args, **kwargs, **{name: build(values)})

        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not p.empty}
        del wrapper.__wrapped__  # the signature above is the command's, not the function's own
        return wrapper
    return decorate


def flag_grid(spec_class: type, values: dict[str, Any]) -> dict[str, list[Any]]:
    """The fields given on the command line as lists of values: comma lists parsed to the field's
    type, single values as one-element lists; fields not given are left out."""
    grid = {}
    for field, setting in settings(spec_class):
        value = values.get(field.name)
        if setting.flag and value is not None:
            grid[field.name] = parse_list(value, python_type(field), field.name) if setting.grid else [value]
    return grid


def spec_values(spec_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """The spec fields among a command's keyword arguments."""
    names = {field.name for field in dataclasses.fields(spec_class)}
    return {name: value for name, value in values.items() if name in names}

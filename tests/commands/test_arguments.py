"""jaxtune.commands.arguments: YAML files among a command's arguments lay over its config; the rest are overrides."""

from __future__ import annotations

import argparse

from jaxtune.commands.arguments import add_command, config_files


def test_yaml_arguments_join_the_config_file_in_order_and_the_rest_are_overrides():
    assert config_files("a.yaml", ["hw.yml", "train.epochs=3", "c.yaml"]) == (
        ["a.yaml", "hw.yml", "c.yaml"],
        ["train.epochs=3"],
    )
    assert config_files("a.yaml", ["train.epochs=3", "data.path=x.yaml"]) == (
        "a.yaml",
        ["train.epochs=3", "data.path=x.yaml"],
    )


def test_a_command_takes_its_help_as_description_and_binds_its_function():
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    run = lambda args: 3  # noqa: E731
    add_command(subparsers, "go", run, "do the thing").add_argument("x")
    args = parser.parse_args(["go", "1"])
    assert args.fn is run and args.fn(args) == 3 and args.x == "1"
    assert subparsers.choices["go"].description == "do the thing"

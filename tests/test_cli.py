from prfaas.cli import build_parser, main


def test_help_lists_commands(capsys: object) -> None:
    parser = build_parser()
    help_text = parser.format_help()
    assert "bench" in help_text


def test_no_command_prints_help_and_fails() -> None:
    assert main([]) == 2

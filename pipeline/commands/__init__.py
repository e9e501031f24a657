"""The bodies of the command line's commands, so that cli.py stays the parser and the
exit codes: `models` (the price table), `status` (text, json, --refresh), `checks` (what a
run is refused for before anything starts), `simulate` (the simulator, with the key to
use printed), `reports` (estimate, report, compare, cancel), `outputs` (an output named
on the command line: a directory, or a URL read through its mirror), `native` (what the
process tells pyarrow's allocator and numpy's OpenBLAS before they load, numpy left
unloaded where Ray does not run, and the interpreter about its exit).

May import: everything.
"""

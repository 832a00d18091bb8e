import signal
import sys

try:
    # The OpenMP wait policy is set per job by cli.main before torch loads (ACTIVE for these batch commands;
    # the explorer sets PASSIVE for itself); importing the CLI loads no torch.
    from tipcore.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C before main took over (importing the CLI): one line, as main says it
    print("error: interrupted", file=sys.stderr)
    code = 130
# The answer is given: a Ctrl-C while the interpreter shuts down would only add a traceback to it.
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    from tipcore.cli import exit_process  # imported above already, unless Ctrl-C came while importing it
except BaseException:  # noqa: BLE001 - the half-imported CLI: the plain exit
    sys.exit(code)
exit_process(code)

# The nodes' info lines (listening, joined) would interleave with the test report.
Logger.configure(level: :warning)
ExUnit.start()

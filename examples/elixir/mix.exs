# The macula_dht application, used from Elixir: `mix test` runs an advertise/discover round trip
# between this VM (a DHT node of its own) and a `rust-node` process.
#
# The application is a rebar3 project (erlang/), taken by path. Mix builds such a dependency
# with rebar3, and by default with a rebar3 of its own that `mix local.rebar` downloads; offline,
# Debian's rebar3 (the one that builds erlang/ anyway) does the same job when MIX_REBAR3 names
# it, which is set here when it is not set already. rebar3 runs the application's pre-hook,
# which builds the NIF with cargo, and writes the beams to this project's _build.
if System.get_env("MIX_REBAR3") in [nil, ""] do
  case System.find_executable("rebar3") do
    nil -> :ok
    rebar3 -> System.put_env("MIX_REBAR3", rebar3)
  end
end

defmodule MaculaDhtExample.MixProject do
  use Mix.Project

  def project do
    [
      app: :macula_dht_example,
      version: "0.1.0",
      elixir: "~> 1.14",
      deps: deps()
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp deps do
    [{:macula_dht, path: "../../erlang", manager: :rebar3}]
  end
end

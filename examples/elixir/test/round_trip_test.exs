defmodule MaculaDhtExample.RoundTripTest do
  # A two-node mesh: this VM, and a rust-node started by :macula_dht_local. Each finds what the
  # other advertises; a withdrawal is seen from the other side.
  use ExUnit.Case

  # How long the mesh may take to converge.
  @within_ms 10_000

  setup do
    rust_node =
      System.get_env("MACULA_RUST_NODE") ||
        Path.expand("../../../target/release/rust-node", __DIR__)

    {:ok, cluster, [rust]} = :macula_dht_local.start(%{beam: 0, rust: 1, rust_node: rust_node})
    on_exit(fn -> :ok = :macula_dht_local.stop(cluster) end)
    start_supervised!(%{id: :dht, start: {MaculaDhtExample, :join, [[rust.addr]]}})
    assert eventually(fn -> MaculaDhtExample.joined?() end)
    %{rust: rust}
  end

  test "this VM and a rust-node find each other's services", %{rust: rust} do
    :ok = MaculaDhtExample.advertise("elixir.calc", "https://elixir.example:9443", 60)
    me = MaculaDhtExample.node_id()
    assert eventually(fn -> :macula_dht_local.discover(rust, "elixir.calc", 1) == {:ok, [me]} end)

    :ok = :macula_dht_local.advertise(rust, "rust.calc", "https://rust.example:9443", 60)
    assert eventually(fn -> match?({:ok, [_]}, MaculaDhtExample.discover("rust.calc")) end)
    {:ok, [provider]} = MaculaDhtExample.discover("rust.calc")
    assert provider.node_id == rust.id
    assert provider.endpoint == "https://rust.example:9443"

    :ok = MaculaDhtExample.remove("elixir.calc")
    assert eventually(fn -> :macula_dht_local.discover(rust, "elixir.calc", 1) == {:ok, []} end)
  end

  # Polls `check` until it returns true or @within_ms have passed.
  defp eventually(check, deadline \\ nil) do
    deadline = deadline || System.monotonic_time(:millisecond) + @within_ms

    cond do
      check.() -> true
      System.monotonic_time(:millisecond) >= deadline -> false
      true -> poll_again(check, deadline)
    end
  end

  defp poll_again(check, deadline) do
    Process.sleep(100)
    eventually(check, deadline)
  end
end

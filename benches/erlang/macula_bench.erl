%% @doc Comparison benchmark: ours (`macula_routing_server', store and table in a Rust NIF) against
%% the old pure-Erlang design (`old_macula_routing_server': the reference from erlang/test, or an
%% import of a real Macula checkout), both in one VM.
%%
%% Every workload runs ?ROUNDS times on fresh servers, alternating which side goes first; a row
%% reports the median of the rounds. Prints a table (with the performance.md budgets) and writes
%% `<OutDir>/erlang.json': `[{"name", "unit", "ours", "baseline", "ratio"}]', ratio > 1 meaning
%% ours is better. `MACULA_BENCH_ONLY=baseline' (or `ours') runs one side only.
%% Entry point: `erl -noshell -run macula_bench main OutDir' (halts with 0, or 1 on any error).
-module(macula_bench).

-export([main/1, run/1]).

-define(ROUNDS, 3).
-define(N_STORE, 100000).
-define(N_UPSERT, 30000).
-define(N_OTHER_KEYS, 10000).
-define(CLIENT_MS, 1000).
-define(N_LATENCY, 20000).
-define(N_ROUNDTRIP, 20000).
-define(MAX_SPIN_OPS, 100000000).

%% --- entry points ------------------------------------------------------------------------------

%% @doc Runs everything, then halts the VM: 0 when every row of every side ran, else 1.
main([OutDir | _]) ->
    process_flag(trap_exit, true),
    Code = try run(to_list(OutDir)) of
               ok -> 0;
               error -> 1
           catch C:R:St ->
               io:format("macula_bench: crashed: ~p:~p~n~p~n", [C, R, St]),
               1
           end,
    erlang:halt(Code).

%% @doc Runs the benchmark and writes the JSON; `ok' or `error' (something did not run).
run(OutDir) ->
    {Sides, SidesOk} = sides(),
    io:format("macula_bench: sides ~p, ~p rounds each, median reported~n", [Sides, ?ROUNDS]),
    Rows = [measure_row(W, Sides) || W <- workloads()],
    Final = [R#{budget => budget(R, Rows)} || R <- Rows],
    print_table(Final),
    Json = filename:join(OutDir, "erlang.json"),
    ok = file:write_file(Json, json(Final)),
    io:format("macula_bench: wrote ~s~n", [Json]),
    RowsOk = lists:all(fun(#{failed := F}) -> F =:= [] end, Final),
    case SidesOk andalso RowsOk of
        true -> ok;
        false -> error
    end.

%% --- sides -------------------------------------------------------------------------------------

side(ours) ->
    #{name => ours, server => macula_routing_server, registry => macula_service_registry};
side(baseline) ->
    #{name => baseline, server => old_macula_routing_server,
      registry => old_macula_service_registry}.

%% The sides to run, and whether every requested side could start.
sides() ->
    Wanted = case os:getenv("MACULA_BENCH_ONLY") of
                 false -> [baseline, ours];
                 "" -> [baseline, ours];
                 "baseline" -> [baseline];
                 "ours" -> [ours];
                 Other -> erlang:error({bad_MACULA_BENCH_ONLY, Other})
             end,
    Usable = [S || S <- Wanted, preflight(side(S)) =:= ok],
    {Usable, length(Usable) =:= length(Wanted)}.

preflight(Side = #{server := Mod}) ->
    try with_server(Side, #{}, fun(_) -> ok end)
    catch C:R ->
        io:format("macula_bench: ERROR: ~p cannot start: ~p:~p~n"
                  "  code:ensure_loaded -> ~p, code:which -> ~p, code:priv_dir(macula_dht) -> ~p~n"
                  "  continuing without this side~n",
                  [Mod, C, R, code:ensure_loaded(Mod), code:which(Mod),
                   code:priv_dir(macula_dht)]),
        error
    end.

%% --- workloads ---------------------------------------------------------------------------------

workloads() ->
    [{"store_local_distinct_keys", "ops/s", fun store_distinct/1},
     {"upsert_100_providers", "ops/s", fun upsert_100/1},
     {"get_local_1_client", "ops/s", fun(S) -> get_local_clients(S, 1) end},
     {"get_local_4_clients", "ops/s", fun(S) -> get_local_clients(S, 4) end},
     {"get_local_latency_3_providers", "us", fun get_local_latency/1},
     {"find_closest_k20_1k_nodes", "us", fun(S) -> find_closest(S, 1000, 2000) end},
     {"find_closest_k20_10k_nodes", "us", fun(S) -> find_closest(S, 10000, 300) end},
     {"roundtrip_1k_services", "us", fun(S) -> roundtrip(S, 1000) end},
     {"roundtrip_100k_services", "us", fun(S) -> roundtrip(S, 100000) end},
     {"bytes_per_record", "bytes", fun bytes_per_record/1}].

store_distinct(Side = #{server := Mod}) ->
    with_server(Side, #{}, fun(Pid) ->
        Provider = provider(1),
        Keys = [bin32() || _ <- lists:seq(1, ?N_STORE)],
        throughput(Keys, fun(Key) -> ok = Mod:store_local(Pid, Key, Provider) end)
    end).

upsert_100(Side = #{server := Mod}) ->
    with_server(Side, #{}, fun(Pid) ->
        Key = bin32(),
        Base = list_to_tuple([provider(I) || I <- lists:seq(1, 100)]),
        [ok = Mod:store_local(Pid, Key, P) || P <- tuple_to_list(Base)],
        T0 = erlang:system_time(second),
        Items = [(element(I rem 100 + 1, Base))#{advertised_at := T0 + I}
                 || I <- lists:seq(1, ?N_UPSERT)],
        Rate = throughput(Items, fun(P) -> ok = Mod:store_local(Pid, Key, P) end),
        {ok, Stored} = Mod:get_local(Pid, Key),
        100 = length(Stored),
        Rate
    end).

get_local_clients(Side = #{server := Mod}, Clients) ->
    with_read_store(Side, fun(Pid, Hot) ->
        clients(Clients, fun() -> Mod:get_local(Pid, Hot) end)
    end).

get_local_latency(Side = #{server := Mod}) ->
    with_read_store(Side, fun(Pid, Hot) ->
        p50_us(?N_LATENCY, fun(_) -> Mod:get_local(Pid, Hot) end, fun(_, _) -> ok end)
    end).

%% A store with ?N_OTHER_KEYS keys plus one hot key holding 3 providers.
with_read_store(Side = #{server := Mod}, Fun) ->
    with_server(Side, #{}, fun(Pid) ->
        [ok = Mod:store_local(Pid, bin32(), provider(I))
         || I <- lists:seq(1, ?N_OTHER_KEYS)],
        Hot = bin32(),
        [ok = Mod:store_local(Pid, Hot, provider(I)) || I <- [1, 2, 3]],
        {ok, [_, _, _]} = Mod:get_local(Pid, Hot),
        Fun(Pid, Hot)
    end).

find_closest(Side = #{server := Mod}, Nodes, Samples) ->
    with_server(Side, #{k => 16384}, fun(Pid) ->
        [ok = Mod:add_node(Pid, #{node_id => bin32(),
                                  address => {{127, 0, 0, 1}, 1024 + I rem 60000}})
         || I <- lists:seq(1, Nodes)],
        case Mod:size(Pid) of
            Nodes -> ok;
            Size -> erlang:error({not_all_nodes_resident, Mod, {size, Size}, {added, Nodes}})
        end,
        Targets = list_to_tuple([bin32() || _ <- lists:seq(1, Samples)]),
        p50_us(Samples, fun(I) -> Mod:find_closest(Pid, element(I, Targets), 20) end,
               fun(_, Found) -> 20 = length(Found), ok end)
    end).

%% Each service has one provider, which re-publishes itself (same node_id) before a discover.
roundtrip(Side = #{server := Mod, registry := Reg}, Services) ->
    with_server(Side, #{}, fun(Pid) ->
        Providers = list_to_tuple([provider(I) || I <- lists:seq(1, Services)]),
        [ok = Reg:publish_to_dht(Pid, service_id(I), element(I, Providers), 300, 20)
         || I <- lists:seq(1, Services)],
        Picks = list_to_tuple([begin I = rand:uniform(Services), {service_id(I), element(I, Providers)} end
                               || _ <- lists:seq(1, ?N_ROUNDTRIP)]),
        p50_us(?N_ROUNDTRIP,
               fun(J) ->
                   {Id, P} = element(J, Picks),
                   ok = Reg:publish_to_dht(Pid, Id, P, 300, 20),
                   Reg:query_dht_for_service(Pid, Id, 20)
               end,
               fun(J, Result) -> has_provider(Mod, element(J, Picks), Result) end)
    end).

has_provider(Mod, {Id, #{node_id := NodeId}}, Result) ->
    {ok, Providers} = Result,
    case [P || P <- Providers, maps:get(node_id, P, undefined) =:= NodeId] of
        [_] when length(Providers) =:= 1 -> ok;
        _ -> erlang:error({expected_one_provider, Mod, Id, Providers})
    end.

bytes_per_record(Side = #{server := Mod}) ->
    with_server(Side, #{}, fun(Pid) ->
        Before = memory(Side, Pid),
        lists:foreach(fun(I) -> ok = Mod:store_local(Pid, bin32(), provider(I)) end,
                      lists:seq(1, ?N_STORE)),
        (memory(Side, Pid) - Before) / ?N_STORE
    end).

%% All-in memory: the BEAM's, plus for ours the NIF's own heap. Read once it has settled (the
%% previous workload's server may still be freeing its heap).
memory(#{name := Name}, Pid) ->
    settled_memory(Pid, erlang:memory(total), 50) + nif_bytes(Name, Pid).

settled_memory(Pid, Last, TriesLeft) ->
    true = erlang:garbage_collect(Pid),
    true = erlang:garbage_collect(),
    timer:sleep(20),
    Now = erlang:memory(total),
    case abs(Now - Last) < 65536 orelse TriesLeft =:= 0 of
        true -> Now;
        false -> settled_memory(Pid, Now, TriesLeft - 1)
    end.

nif_bytes(baseline, _Pid) ->
    0;
nif_bytes(ours, Pid) ->
    case macula_routing_server:stats(Pid) of
        #{nif_allocated_bytes := Bytes} -> Bytes;
        Stats -> erlang:error({no_nif_allocated_bytes_in_stats, Stats})
    end.

%% --- data --------------------------------------------------------------------------------------

provider(I) ->
    #{node_id => bin32(),
      endpoint => iolist_to_binary(io_lib:format("https://node-~5..0B.macula.test:9443",
                                                 [I rem 100000])),
      metadata => #{version => <<"1.0">>},
      ttl => 300,
      advertised_at => erlang:system_time(second)}.

%% 32 random bytes as a plain heap binary (rand:bytes/1 gives a growable refc binary, which
%% would distort the memory row).
bin32() ->
    <<(rand:uniform(1 bsl 256) - 1):256>>.

service_id(I) ->
    <<"io.macula.bench.service.", (integer_to_binary(I))/binary>>.

%% --- servers -----------------------------------------------------------------------------------

%% Fresh server around Fun(Pid), stopped by pid afterwards whatever happens. Data is seeded so
%% that both sides see the same keys, ids and targets.
with_server(#{server := Mod}, Config, Fun) ->
    _ = (catch gen_server:stop(Mod)),
    _ = rand:seed(exsss, {17, 42, 4242}),
    Pid = case Mod:start_link(local_id(), Config) of
              {ok, P} -> P;
              Other -> erlang:error({start_link_failed, Mod, Other})
          end,
    try Fun(Pid)
    after
        catch gen_server:stop(Pid),
        flush_exits()
    end.

local_id() ->
    crypto:hash(sha256, <<"macula_bench local node">>).

flush_exits() ->
    receive {'EXIT', _, _} -> flush_exits()
    after 0 -> ok
    end.

%% --- timing (every row goes through timed/1) ---------------------------------------------------

timed(Fun) ->
    T0 = erlang:monotonic_time(nanosecond),
    Result = Fun(),
    {erlang:monotonic_time(nanosecond) - T0, Result}.

%% Ops/s of Fun applied to every item, in this process.
throughput(Items, Fun) ->
    {Ns, ok} = timed(fun() -> lists:foreach(Fun, Items) end),
    length(Items) / (Ns / 1.0e9).

%% Median microseconds of Call(I), I = 1..N, timed one call at a time; Check(I, Result) untimed.
p50_us(N, Call, Check) ->
    Samples = [begin
                   {Ns, Result} = timed(fun() -> Call(I) end),
                   ok = Check(I, Result),
                   Ns
               end || I <- lists:seq(1, N)],
    median(Samples) / 1000.

%% Total ops/s of N client processes started together, each calling Fun for ?CLIENT_MS.
clients(N, Fun) ->
    Self = self(),
    Clients = [spawn_monitor(fun() -> client(Self, Fun) end) || _ <- lists:seq(1, N)],
    Deadline = erlang:monotonic_time(nanosecond) + ?CLIENT_MS * 1000000,
    [Pid ! {go, Deadline} || {Pid, _} <- Clients],
    lists:sum([client_rate(C) || C <- Clients]).

client(Parent, Fun) ->
    receive {go, Deadline} -> ok end,
    {Ns, Count} = timed(fun() -> spin(Fun, Deadline, 0) end),
    Parent ! {done, self(), Count, Ns}.

client_rate({Pid, Ref}) ->
    receive
        {done, Pid, Count, Ns} -> erlang:demonitor(Ref, [flush]), Count / (Ns / 1.0e9);
        {'DOWN', Ref, process, Pid, Reason} -> erlang:error({client_died, Reason})
    after ?CLIENT_MS * 20 ->
        erlang:error(client_timeout)
    end.

%% Calls Fun in batches of 64 until the deadline (or ?MAX_SPIN_OPS); returns the call count.
spin(Fun, Deadline, Count) ->
    batch(Fun, 64),
    Done = Count + 64,
    case erlang:monotonic_time(nanosecond) >= Deadline orelse Done >= ?MAX_SPIN_OPS of
        true -> Done;
        false -> spin(Fun, Deadline, Done)
    end.

batch(_Fun, 0) -> ok;
batch(Fun, N) -> _ = Fun(), batch(Fun, N - 1).

median(Values) ->
    Sorted = lists:sort(Values),
    lists:nth((length(Sorted) + 1) div 2, Sorted).

%% --- rows --------------------------------------------------------------------------------------

measure_row({Name, Unit, Fun}, Sides) ->
    io:format("  ~s ...~n", [Name]),
    Rounds = lists:foldl(fun(Round, Acc) ->
                             lists:foldl(fun(S, A) -> one_round(Fun, S, A) end, Acc,
                                         order(Round, Sides))
                         end, #{}, lists:seq(1, ?ROUNDS)),
    Ours = value(ours, Rounds),
    Baseline = value(baseline, Rounds),
    #{name => Name, unit => Unit, ours => Ours, baseline => Baseline,
      ratio => ratio(Unit, Ours, Baseline),
      failed => [S || {S, {error, _}} <- maps:to_list(Rounds)]}.

order(Round, Sides) when Round rem 2 =:= 1 -> Sides;
order(_, Sides) -> lists:reverse(Sides).

%% A side that failed once is not run again in this row.
one_round(Fun, Side, Acc) ->
    case maps:get(Side, Acc, []) of
        {error, _} -> Acc;
        Values -> Acc#{Side => one_value(Fun, Side, Values)}
    end.

one_value(Fun, Side, Values) ->
    try [Fun(side(Side)) | Values]
    catch C:R:St ->
        io:format("    ~p FAILED: ~p:~p~n    ~p~n", [Side, C, R, lists:sublist(St, 4)]),
        {error, R}
    end.

value(Side, Rounds) ->
    case maps:get(Side, Rounds, undefined) of
        [_ | _] = Values -> median(Values);
        _ -> undefined
    end.

ratio(_, Ours, Baseline) when not is_number(Ours); not is_number(Baseline) -> undefined;
ratio(_, Ours, Baseline) when Ours == 0; Baseline == 0 -> undefined;
ratio("ops/s", Ours, Baseline) -> Ours / Baseline;
ratio(_, Ours, Baseline) -> Baseline / Ours.

%% --- budgets (performance.md) ------------------------------------------------------------------

budget(#{name := "get_local_latency_3_providers", ours := O}, _) ->
    verdict("<= 1.5 us", [at_most(O, 1.5)]);
budget(#{name := "get_local_4_clients", ratio := R}, _) ->
    verdict("ratio >= 5", [at_least(R, 5)]);
budget(#{name := "upsert_100_providers", ratio := R}, _) ->
    verdict("ratio >= 5", [at_least(R, 5)]);
budget(#{name := "find_closest_k20_10k_nodes", ours := O}, _) ->
    verdict("<= 20 us", [at_most(O, 20)]);
budget(#{name := "roundtrip_100k_services", ours := O, ratio := R}, Rows) ->
    [#{ours := O1k}] = [Row || Row = #{name := "roundtrip_1k_services"} <- Rows],
    Flat = case is_number(O) andalso is_number(O1k) andalso O1k > 0 of
               true -> O / O1k;
               false -> undefined
           end,
    verdict("ratio >= 2, 100k/1k <= 2", [at_least(R, 2), at_most(Flat, 2)]);
budget(#{name := "bytes_per_record", ours := O}, _) ->
    verdict("<= 300 B", [at_most(O, 300)]);
budget(_, _) ->
    none.

at_most(V, Limit) when is_number(V) -> V =< Limit;
at_most(_, _) -> undefined.

at_least(V, Limit) when is_number(V) -> V >= Limit;
at_least(_, _) -> undefined.

verdict(Label, Checks) ->
    case {lists:member(undefined, Checks), lists:all(fun(C) -> C =:= true end, Checks)} of
        {true, _} -> {Label, "n/a"};
        {false, true} -> {Label, "pass"};
        {false, false} -> {Label, "FAIL"}
    end.

%% --- output ------------------------------------------------------------------------------------

print_table(Rows) ->
    io:format("~n"),
    line(["name", "unit", "ours", "baseline", "ratio", "budget"]),
    [line([N, U, num(O, 2), num(B, 2), num(R, 2), budget_text(Bg)])
     || #{name := N, unit := U, ours := O, baseline := B, ratio := R, budget := Bg} <- Rows],
    ok.

line([Name, Unit, Ours, Baseline, Ratio, Budget]) ->
    io:format("~-32s ~-6s ~14s ~14s ~8s  ~s~n", [Name, Unit, Ours, Baseline, Ratio, Budget]).

budget_text(none) -> "";
budget_text({Label, Verdict}) -> Verdict ++ " (" ++ Label ++ ")".

json(Rows) ->
    Objects = [io_lib:format("  {\"name\": \"~s\", \"unit\": \"~s\", \"ours\": ~s, "
                             "\"baseline\": ~s, \"ratio\": ~s}",
                             [N, U, json_num(O), json_num(B), json_num(R)])
               || #{name := N, unit := U, ours := O, baseline := B, ratio := R} <- Rows],
    ["[\n", lists:join(",\n", Objects), "\n]\n"].

json_num(undefined) -> "null";
json_num(V) -> num(V, 4).

num(undefined, _) -> "-";
num(V, Decimals) -> float_to_list(float(V), [{decimals, Decimals}]).

to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(L) -> L.

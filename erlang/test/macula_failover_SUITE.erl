%% @doc Failover of a mixed cluster on loopback, with the engine's default k (20):
%%
%% 1. When a third of a 12-node cluster (4 BEAM VMs, 8 `rust-node' processes) dies at once by
%%    `kill -9', full lookups from every survivor (wanting 20 providers of a service that has one,
%%    so no lookup stops early) are under 1 s again within 10 s of the kill, and from 30 s on their
%%    p99 is under 100 ms, every one still finding the provider: dead peers are timed out at their
%%    usual answer time, then suspect (not asked), then evicted.
%% 2. Nodes start in any order: a node whose bootstrap address nobody answers yet keeps serving,
%%    says it has not joined, and joins once a node comes up at that address; then services
%%    cross. Rust first and BEAM second, then the other way round.
%%
%% The nodes are OS processes of `macula_cluster_harness' (its owner stops them all, pass or fail,
%% in `end_per_testcase'). The figures are printed to the console (stdout) and the log.
-module(macula_failover_SUITE).

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([full_lookups_are_fast_after_a_third_dies/1,
         a_node_started_first_joins_when_its_bootstrap_peer_comes_up/1]).

-include_lib("stdlib/include/assert.hrl").

-import(macula_cluster_harness, [beam_call/4, stats/1]).

%% Providers a full lookup wants: more than exist, so it asks every node it learns of.
-define(WANT, 20).
-define(SERVICE, <<"failover.provided">>).
-define(TTL, 300).
%% The budgets of case 1: from `?RECOVERED_AFTER_MS' after the kill a full lookup takes under
%% `?RECOVERED_LOOKUP_MS'; from `?SETTLED_AFTER_MS' on, the p99 of `?SETTLED_LOOKUPS' full
%% lookups of each survivor is under `?SETTLED_P99_MS'.
-define(RECOVERED_AFTER_MS, 10000).
-define(RECOVERED_LOOKUP_MS, 1000).
-define(SETTLED_AFTER_MS, 30000).
-define(SETTLED_LOOKUPS, 100).
-define(SETTLED_P99_MS, 100).
%% `ctl status' calls per Rust survivor timed to know the cost of `rust-node ctl' itself.
-define(CTL_SAMPLES, 20).
%% How long the cluster may take to be complete (every node knows every other) and to find the
%% provider.
-define(CLUSTER_WAIT_MS, 20000).
%% Case 2: how long the first node is watched not having joined, then how long it may take to
%% join once its bootstrap peer is up (its retries back off from 1 s, doubling), and to find a
%% service.
-define(UNJOINED_MS, 2000).
-define(JOIN_MS, 15000).
-define(FIND_MS, 10000).

all() ->
    [full_lookups_are_fast_after_a_third_dies,
     a_node_started_first_joins_when_its_bootstrap_peer_comes_up].

suite() ->
    [{timetrap, {minutes, 3}}].

init_per_suite(Config) ->
    macula_cluster_harness:check_binary(Config).

end_per_suite(_Config) ->
    macula_cluster_harness:stop_leftover().

init_per_testcase(_Case, Config) ->
    [{harness, macula_cluster_harness:start()} | Config].

end_per_testcase(_Case, Config) ->
    macula_cluster_harness:stop_all(proplists:get_value(harness, Config)).

%%--------------------------------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------------------------------

%% r1 advertises; once every node finds it, b3, b4, r7 and r8 are killed (`kill -9' of their OS
%% pids). From then on the survivors take turns running full lookups: up to 10 s after the kill
%% (phase 1, printed), then up to 30 s (each survivor's first lookup started 10 s or more after
%% the kill must take under 1 s and find r1; the others are printed), then `?SETTLED_LOOKUPS'
%% rounds (phase 2: the p99 of each survivor under 100 ms, every lookup finding r1).
%%
%% What is timed: a BEAM lookup inside its own VM (`timer:tc' of `find_value/3' there, so the
%% peer connection to this VM is not counted); a Rust lookup from here, around the whole
%% `rust-node ctl discover' command, so its figure includes starting that process. That
%% overhead is timed on its own afterwards (`ctl status') and printed. The assertions are on the
%% figures as measured, overhead included: an upper bound of the lookup itself.
full_lookups_are_fast_after_a_third_dies(Config) ->
    Nodes = start_cluster(proplists:get_value(harness, Config)),
    Advertiser = node_named("r1", Nodes),
    ?assertEqual(ok, macula_cluster_harness:advertise(Advertiser, ?SERVICE, ?TTL)),
    found_by_all(Nodes, Advertiser, ?SERVICE, ?CLUSTER_WAIT_MS),
    Victims = [node_named(Name, Nodes) || Name <- ["b3", "b4", "r7", "r8"]],
    Survivors = Nodes -- Victims,

    Killed = now_ms(),
    _ = [macula_cluster_harness:signal(Victim, "KILL") || Victim <- Victims],
    Phase1 = lookups_until(Survivors, Advertiser, Killed, Killed + ?RECOVERED_AFTER_MS),
    Between = lookups_until(Survivors, Advertiser, Killed, Killed + ?SETTLED_AFTER_MS),
    ?assertEqual([], [name(V) || V <- Victims, macula_cluster_harness:is_os_process_alive(V)]),
    At30s = [{Node, stats(Node)} || Node <- Survivors],
    Phase2 = lists:append([[timed_lookup(Node, Advertiser, Killed) || Node <- Survivors]
                           || _ <- lists:seq(1, ?SETTLED_LOOKUPS)]),
    AtEnd = [{Node, stats(Node)} || Node <- Survivors],
    Overhead = [{Node, ctl_overhead(Node)} || #{kind := rust} = Node <- Survivors],

    report(Survivors, #{phase1 => Phase1, between => Between, phase2 => Phase2,
                        overhead => Overhead, at_30s => At30s, at_end => AtEnd}),
    ?assertEqual([], [{name(N), Ms, R} || N <- Survivors,
                                          #{ms := Ms, result := R} <- [first_of(N, Between)],
                                          Ms >= ?RECOVERED_LOOKUP_MS orelse R =/= found]),
    ?assertEqual([], [{name(N), P99} || N <- Survivors,
                                        P99 <- [percentile(99, durations(N, Phase2))],
                                        P99 >= ?SETTLED_P99_MS]),
    ?assertEqual([], [{name(N), S, R} || #{node := N, started := S, result := R} <- Phase2,
                                         R =/= found]).

%% Rust first, BEAM second; then BEAM first, Rust second.
a_node_started_first_joins_when_its_bootstrap_peer_comes_up(Config) ->
    Harness = proplists:get_value(harness, Config),
    joins_when_its_peer_comes_up(Harness, rust, beam),
    joins_when_its_peer_comes_up(Harness, beam, rust).

%% A node of kind `FirstKind' bootstraps from a free port: it keeps running and has not joined.
%% A node of kind `SecondKind' then listens on that port: within `?JOIN_MS' the first has
%% joined, and a service advertised on either is found from the other.
joins_when_its_peer_comes_up(Harness, FirstKind, SecondKind) ->
    Addr = "127.0.0.1:" ++ integer_to_list(macula_cluster_harness:free_port()),
    First = start_node(Harness, FirstKind, atom_to_list(FirstKind) ++ "_first",
                       #{bootstrap => Addr}),
    ?assertMatch(#{joined := false}, stats(First)),
    timer:sleep(?UNJOINED_MS),
    ?assert(macula_cluster_harness:is_os_process_alive(First)),
    ?assertMatch(#{joined := false, peers := 0}, stats(First)),
    Second = start_node(Harness, SecondKind, atom_to_list(SecondKind) ++ "_second",
                        #{listen => Addr}),
    Up = now_ms(),
    macula_cluster_harness:wait_until({name(First), joins, Addr},
                                      fun() -> joined(First) end, ?JOIN_MS),
    say("~ts joined ~b ms after ~ts came up at ~ts",
        [name(First), now_ms() - Up, name(Second), Addr]),
    _ = [begin
             Service = iolist_to_binary(["late.", name(From)]),
             ?assertEqual(ok, macula_cluster_harness:advertise(From, Service, ?TTL)),
             found_by_all([To], From, Service, ?FIND_MS)
         end || {From, To} <- [{First, Second}, {Second, First}]],
    ok.

%%--------------------------------------------------------------------------------------------
%% Nodes
%%--------------------------------------------------------------------------------------------

%% r1, then b1..b4 and r2..r8 interleaved, each joining through r1, with default settings.
%% Ready once every node knows every other.
start_cluster(Harness) ->
    Seed = start_node(Harness, rust, "r1", #{}),
    Names = ["b1", "r2", "b2", "r3", "b3", "r4", "b4", "r5", "r6", "r7", "r8"],
    Nodes = [Seed | [start_node(Harness, kind(Name), Name, #{bootstrap => addr(Seed)})
                     || Name <- Names]],
    Others = length(Nodes) - 1,
    _ = macula_cluster_harness:wait_each(
          complete_tables,
          fun(Node) ->
                  case stats(Node) of
                      #{peers := Others} -> {ok, Others};
                      #{peers := Peers} -> {wait, {peers, Peers}}
                  end
          end, Nodes, ?CLUSTER_WAIT_MS),
    ct:log("cluster: ~p",
           [[{name(N), addr(N), binary:encode_hex(Id)} || #{id := Id} = N <- Nodes]]),
    Nodes.

%% A node of either kind on 127.0.0.1. `Options': `listen' (default: a port of the system's
%% choice) and `bootstrap' (default: none), addresses as strings.
start_node(Harness, beam, Name, Options) ->
    Bootstrap = case Options of
                    #{bootstrap := Addr} -> #{bootstrap => [Addr]};
                    #{} -> #{}
                end,
    Listen = maps:get(listen, Options, "127.0.0.1:0"),
    macula_cluster_harness:start_beam(Harness, Name, Bootstrap#{listen => Listen});
start_node(Harness, rust, Name, Options) ->
    Bootstrap = case Options of
                    #{bootstrap := Addr} -> ["--bootstrap", Addr];
                    #{} -> []
                end,
    Listen = maps:get(listen, Options, "127.0.0.1:0"),
    macula_cluster_harness:start_rust(Harness, Name, Listen, Bootstrap).

kind([$b | _]) -> beam;
kind([$r | _]) -> rust.

name(#{name := Name}) -> Name.

addr(#{addr := Addr}) -> binary_to_list(Addr).

node_named(Name, Nodes) ->
    [Node] = [N || #{name := Named} = N <- Nodes, Named =:= Name],
    Node.

joined(Node) ->
    case stats(Node) of
        #{joined := true, peers := Peers} -> {ok, Peers};
        #{joined := Joined, peers := Peers} -> {wait, {joined, Joined, peers, Peers}}
    end.

%% Within `Timeout' ms every one of `Nodes' finds `Provider' among the providers of `Service'
%% by a full lookup.
found_by_all(Nodes, #{id := Id}, Service, Timeout) ->
    macula_cluster_harness:wait_each(
      {found, Service},
      fun(Node) ->
              case macula_cluster_harness:discover(Node, Service, ?WANT) of
                  {ok, Ids} = Found ->
                      case lists:member(Id, Ids) of
                          true -> Found;
                          false -> {wait, Found}
                      end;
                  Error ->
                      {wait, Error}
              end
      end, Nodes, Timeout).

%%--------------------------------------------------------------------------------------------
%% Timed lookups
%%--------------------------------------------------------------------------------------------

%% Survivors take turns at full lookups, each started before `Until' (ms).
lookups_until(Survivors, Provider, Killed, Until) ->
    lookups_until(Survivors, Survivors, Provider, Killed, Until, []).

lookups_until(Survivors, [], Provider, Killed, Until, Done) ->
    lookups_until(Survivors, Survivors, Provider, Killed, Until, Done);
lookups_until(Survivors, [Node | Next], Provider, Killed, Until, Done) ->
    case now_ms() < Until of
        true ->
            Lookup = timed_lookup(Node, Provider, Killed),
            lookups_until(Survivors, Next, Provider, Killed, Until, [Lookup | Done]);
        false ->
            lists:reverse(Done)
    end.

%% One full lookup of `?SERVICE' by `Node': when it started (ms after the kill), how long it took
%% (ms) and whether it found `Provider' (`found', `{not_found, Ids}' or `{error, Why}').
timed_lookup(Node, #{id := Id}, Killed) ->
    Started = now_ms(),
    {Us, Reply} = lookup(Node),
    Result = case Reply of
                 {ok, Ids} ->
                     case lists:member(Id, Ids) of
                         true -> found;
                         false -> {not_found, Ids}
                     end;
                 {error, _} = Error ->
                     Error
             end,
    #{node => Node, started => Started - Killed, ms => Us / 1000, result => Result}.

%% `{Microseconds, {ok, SortedIds} | {error, Why}}': see the case's comment for what is timed.
lookup(#{kind := beam} = Node) ->
    Key = macula_service_registry:service_key(?SERVICE),
    {Us, Reply} = beam_call(Node, timer, tc, [macula_routing_server, find_value,
                                              [macula_routing_server, Key, ?WANT]]),
    {Us, case Reply of
             {ok, Providers} -> {ok, lists:sort([Id || #{node_id := Id} <- Providers])};
             Error -> {error, Error}
         end};
lookup(#{kind := rust} = Node) ->
    timer:tc(macula_cluster_harness, discover, [Node, ?SERVICE, ?WANT]).

%% Milliseconds each of `?CTL_SAMPLES' `rust-node ctl status' commands took: the cost of the
%% command alone, without a lookup.
ctl_overhead(Node) ->
    [begin
         {Us, {0, _}} = timer:tc(macula_cluster_harness, ctl, [Node, ["status", "--json"]]),
         Us / 1000
     end || _ <- lists:seq(1, ?CTL_SAMPLES)].

lookups_of(Node, Lookups) ->
    [L || #{node := N} = L <- Lookups, N =:= Node].

first_of(Node, Lookups) ->
    hd(lookups_of(Node, Lookups)).

durations(Node, Lookups) ->
    [Ms || #{ms := Ms} <- lookups_of(Node, Lookups)].

%% Nearest rank: the smallest value at least `P' % of the values are at or below.
percentile(P, Values) ->
    Sorted = lists:sort(Values),
    lists:nth(max(1, ceil(P * length(Sorted) / 100)), Sorted).

%%--------------------------------------------------------------------------------------------
%% Figures
%%--------------------------------------------------------------------------------------------

report(Survivors, #{phase1 := Phase1, between := Between, phase2 := Phase2,
                    overhead := Overhead, at_30s := At30s, at_end := AtEnd}) ->
    say("figures in ms; a BEAM lookup timed in its VM, a Rust one around `rust-node ctl "
        "discover'; lookups listed as <started, ms after the kill>:<took>", []),
    _ = [begin
             First = first_of(Node, Between),
             Later = tl(lookups_of(Node, Between)),
             Settled = durations(Node, Phase2),
             say("~ts (~ts): phase 1 (0-10 s) ~b lookups, max ~ts; first after 10 s ~ts (~p); "
                 "phase 2 (from 30 s) ~b lookups, p50 ~ts, p99 ~ts, max ~ts",
                 [name(Node), kind_name(Node), length(lookups_of(Node, Phase1)),
                  ms(lists:max([0 | durations(Node, Phase1)])), ms(maps:get(ms, First)),
                  maps:get(result, First), length(Settled), ms(percentile(50, Settled)),
                  ms(percentile(99, Settled)), ms(lists:max(Settled))]),
             say("  phase 1: ~ts", [listing(lookups_of(Node, Phase1))]),
             say("  10-30 s, after the first: ~b lookups, max ~ts; those over ~b ms: ~ts",
                 [length(Later), ms(lists:max([0 | [Ms || #{ms := Ms} <- Later]])),
                  ?SETTLED_P99_MS,
                  listing([L || #{ms := Ms} = L <- Later, Ms >= ?SETTLED_P99_MS])]),
             say("  node's own counters at 30 s/end: peers ~b/~b, suspects ~b/~b, lookups ~b/~b, "
                 "lookup p50 ~b/~b us, p99 ~b/~b us (its recent lookups of any kind)",
                 lists:append([[maps:get(F, proplists:get_value(Node, At30s)),
                                maps:get(F, proplists:get_value(Node, AtEnd))]
                               || F <- [peers, suspects, lookups, lookup_p50_us, lookup_p99_us]])),
             case proplists:get_value(Node, Overhead) of
                 undefined ->
                     ok;
                 Ctl ->
                     say("  `rust-node ctl status' alone (~b calls): p50 ~ts, p99 ~ts, max ~ts",
                         [length(Ctl), ms(percentile(50, Ctl)), ms(percentile(99, Ctl)),
                          ms(lists:max(Ctl))])
             end
         end || Node <- Survivors],
    ok.

%% `<started>:<took>' of each lookup, its result added unless it found the provider.
listing([]) ->
    "none";
listing(Lookups) ->
    lists:join(" ", [[integer_to_list(S), ":", ms(Ms) | unless_found(R)]
                     || #{started := S, ms := Ms, result := R} <- Lookups]).

unless_found(found) -> [];
unless_found(Result) -> io_lib:format("(~0p)", [Result]).

kind_name(#{kind := Kind}) -> atom_to_list(Kind).

ms(Ms) -> io_lib:format("~.1f", [float(Ms)]).

%% To the case's log and the console (ct:pal), and to this VM's stdout, which `make test' shows.
say(Format, Args) ->
    ct:pal(Format, Args),
    io:format(user, "failover: " ++ Format ++ "~n", Args).

now_ms() ->
    erlang:monotonic_time(millisecond).

%% @doc A mixed cluster on loopback: BEAM nodes and Rust nodes form one DHT and share one
%% provider store.
%%
%% Each case starts its own cluster of 6 OS processes: 3 BEAM VMs (each an `erl' peer without a
%% shell, running `macula_routing_server' in network mode) and 3 `rust-node run' processes, each
%% joining through the nodes started before it (the kinds alternate, so BEAM nodes join through
%% Rust nodes and the other way round). `end_per_testcase' stops them all, pass or fail.
%% Services are advertised and discovered on both kinds, and every node must see the same
%% providers.
-module(macula_cluster_SUITE).

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([services_cross_between_kinds/1,
         mixed_providers_of_one_service/1,
         removal_reaches_every_node/1,
         expiry_reaches_every_node/1,
         kill9_loses_nothing_of_the_survivors/1,
         atoms_unknown_to_a_reader_arrive_as_binaries/1,
         a_hostile_peer_changes_nothing/1]).

-include_lib("stdlib/include/assert.hrl").

-import(macula_cluster_harness, [beam_call/4, ctl/2, ids/1]).

%% Replication width of every node, BEAM and Rust. With 6 nodes, k = 3 keeps a record on its
%% advertiser and the 3 other nodes closest to its key, so the other nodes must find it by a
%% lookup, and killing 2 nodes can take 2 of its 3 replicas.
-define(K, 3).
%% "Within this long every node sees it".
-define(WAIT_MS, 10000).
%% Seconds a record lives in the expiry case; short, but long enough to be seen everywhere first.
-define(SHORT_TTL, 3).
-define(TTL, 300).
%% Store caps of every node: another publisher may hold 10 % of them (200 records) and send
%% 100 STOREs a second (bursts of 500).
-define(MAX_RECORDS, 2000).
-define(SHARE, 200).
-define(STORES_PER_S, 100).

all() ->
    [services_cross_between_kinds,
     mixed_providers_of_one_service,
     removal_reaches_every_node,
     expiry_reaches_every_node,
     kill9_loses_nothing_of_the_survivors,
     atoms_unknown_to_a_reader_arrive_as_binaries,
     a_hostile_peer_changes_nothing].

suite() ->
    [{timetrap, {minutes, 2}}].

init_per_suite(Config) ->
    macula_cluster_harness:check_binary(Config).

end_per_suite(_Config) ->
    macula_cluster_harness:stop_leftover().

%% CT runs no end_per_testcase after a failed init_per_testcase: the cluster is stopped here.
init_per_testcase(_Case, Config) ->
    Harness = macula_cluster_harness:start(),
    try
        [{harness, Harness}, {nodes, start_cluster(Harness)} | Config]
    catch
        Class:Reason:Stack ->
            macula_cluster_harness:stop_all(Harness),
            erlang:raise(Class, Reason, Stack)
    end.

end_per_testcase(_Case, Config) ->
    macula_cluster_harness:stop_all(proplists:get_value(harness, Config)).

%%--------------------------------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------------------------------

%% A service advertised from a BEAM node is discovered from every node, Rust nodes included,
%% and one advertised from a Rust node is discovered from every node, BEAM nodes included.
services_cross_between_kinds(Config) ->
    [B1, R1 | _] = Nodes = cluster(Config),
    advertise(B1, <<"cross.from-beam">>, ?TTL),
    advertise(R1, <<"cross.from-rust">>, ?TTL),
    everywhere(Nodes, <<"cross.from-beam">>, [B1]),
    everywhere(Nodes, <<"cross.from-rust">>, [R1]).

%% A BEAM provider and a Rust provider of one service: every node returns both.
mixed_providers_of_one_service(Config) ->
    [_, _, B2, R2 | _] = Nodes = cluster(Config),
    advertise(B2, <<"mixed">>, ?TTL),
    advertise(R2, <<"mixed">>, ?TTL),
    everywhere(Nodes, <<"mixed">>, [B2, R2]).

%% A withdrawal (BEAM: `remove_from_dht' with the node's own id; Rust: `ctl remove') reaches
%% every node, while the other provider of the same service stays.
removal_reaches_every_node(Config) ->
    [B1, R1, B2, R2 | _] = Nodes = cluster(Config),
    advertise(B1, <<"removal.beam">>, ?TTL),
    advertise(B2, <<"removal.beam">>, ?TTL),
    advertise(R1, <<"removal.rust">>, ?TTL),
    advertise(R2, <<"removal.rust">>, ?TTL),
    everywhere(Nodes, <<"removal.beam">>, [B1, B2]),
    everywhere(Nodes, <<"removal.rust">>, [R1, R2]),
    remove(B1, <<"removal.beam">>),
    remove(R1, <<"removal.rust">>),
    everywhere(Nodes, <<"removal.beam">>, [B2]),
    everywhere(Nodes, <<"removal.rust">>, [R2]).

%% Records published once with a short ttl (BEAM: `publish_to_dht' with ttl 3; Rust:
%% `ctl advertise --once --ttl 3') are first seen, then gone, everywhere.
expiry_reaches_every_node(Config) ->
    [_, _, B2, R2 | _] = Nodes = cluster(Config),
    Published = erlang:monotonic_time(millisecond),
    advertise(B2, <<"expiry.beam">>, ?SHORT_TTL),
    advertise_once(R2, <<"expiry.rust">>, ?SHORT_TTL),
    %% Seen by every node before the ttl runs out, so the expiry below is not vacuous.
    SeenBy = Published + timer:seconds(?SHORT_TTL) - 500,
    everywhere(Nodes, <<"expiry.beam">>, [B2], SeenBy - erlang:monotonic_time(millisecond)),
    everywhere(Nodes, <<"expiry.rust">>, [R2], SeenBy - erlang:monotonic_time(millisecond)),
    everywhere(Nodes, <<"expiry.beam">>, [], ?WAIT_MS),
    everywhere(Nodes, <<"expiry.rust">>, [], ?WAIT_MS).

%% Each of the 4 survivors advertises a service, named so that the victims are among its
%% replicas where the ids allow it (so it loses replicas; the victims are checked to hold them).
%% After `kill -9' of one BEAM VM and one Rust node (by OS pid), every survivor still discovers
%% every survivor's service.
kill9_loses_nothing_of_the_survivors(Config) ->
    [B1, R1, B2, R2, B3, R3] = Nodes = cluster(Config),
    Victims = [B3, R3],
    Survivors = [B1, R1, B2, R2],
    Services = [{Node, service_held_by(<<"kill9">>, Node, Victims, Nodes)} || Node <- Survivors],
    ct:log("services of the survivors, and their replicas: ~p",
           [[{name(N), S, [name(H) || H <- replicas(N, S, Nodes)]} || {N, S} <- Services]]),
    _ = [advertise(Node, Service, ?TTL) || {Node, Service} <- Services],
    _ = [everywhere(Nodes, Service, [Node]) || {Node, Service} <- Services],
    _ = [held_by_victim(Victim, [S || {N, S} <- Services,
                                      lists:member(Victim, replicas(N, S, Nodes))])
         || Victim <- Victims],
    _ = [macula_cluster_harness:signal(Victim, "KILL") || Victim <- Victims],
    wait_for(victims_gone,
             fun() -> [name(V) || V <- Victims, macula_cluster_harness:is_os_process_alive(V)] end,
             []),
    _ = [everywhere(Survivors, Service, [Node]) || {Node, Service} <- Services],
    ok.

%% A provider map holding an atom that only its publisher's VM has is read by the other BEAM
%% nodes with that atom as a binary: no VM creates an atom from what a peer sent.
atoms_unknown_to_a_reader_arrive_as_binaries(Config) ->
    [B1, _, B2, _, B3 | _] = Nodes = cluster(Config),
    Name = <<"macula_test_only_on_b1_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    Atom = beam_call(B1, erlang, binary_to_atom, [Name, utf8]),
    Service = <<"atoms">>,
    Provider = #{node_id => maps:get(id, B1), endpoint => endpoint(B1), metadata => #{Atom => <<"eu">>}},
    ok = beam_call(B1, macula_service_registry, publish_to_dht,
                   [macula_routing_server, Service, Provider, ?TTL, ?K]),
    everywhere(Nodes, Service, [B1]),
    [begin
         {ok, [Read]} = beam_call(Reader, macula_service_registry, query_dht_for_service,
                                  [macula_routing_server, Service, 1]),
         ?assertMatch(#{metadata := #{Name := <<"eu">>}}, Read),
         ?assertError(badarg, beam_call(Reader, erlang, binary_to_existing_atom, [Name, utf8]))
     end || Reader <- [B2, B3]],
    ok.

%% A peer with a valid identity of its own (`hostile_peer', speaking the protocol directly)
%% attacks the records of a BEAM provider and a Rust provider on every node:
%% 1. a forged STORE under each provider's slot, a forged REMOVE of it, and a STORE naming the
%%    provider's node id signed by the hostile key are refused by every node;
%% 2. a record captured before its publisher removed it, replayed to the nodes that held it, is
%%    refused by each;
%% 3. a flood of valid STOREs at a BEAM node and at a Rust node is refused past the flooder's
%%    share and rate, while an honest STORE to both during the flood is taken;
%% 4. a hostile replica close to the key answers every lookup with providers their publishers
%%    never signed: every node's lookup drops them, and still finds both honest providers.
%% Every refusal is counted in `stats/1' and `ctl status'.
a_hostile_peer_changes_nothing(Config) ->
    [B1, R1, B2, R2, B3, R3] = Nodes = cluster(Config),
    Harness = proplists:get_value(harness, Config),
    Hostile = macula_cluster_harness:hostile_peer_binary(),
    filelib:is_regular(Hostile) orelse ct:fail({hostile_peer_not_built, Hostile}),
    Victim = <<"trust.victim">>,
    advertise(B1, Victim, ?TTL),
    advertise(R1, Victim, ?TTL),
    everywhere(Nodes, Victim, [B1, R1]),

    %% 1. Forgeries: 2 providers x 3 attacks x 6 nodes.
    Expected = #{<<"forged_store">> => <<"forged_signature">>,
                 <<"forged_remove">> => <<"forged_signature">>,
                 <<"wrong_publisher">> => <<"wrong_publisher">>},
    Attacks = hostile(Harness, ["attack", "--service", Victim | node_args(Nodes)]),
    ?assertEqual(2 * 3 * length(Nodes), length(Attacks)),
    _ = [?assertEqual({Attack, Node, maps:get(Attack, Expected)}, {Attack, Node, Answer})
         || [Attack, Node, Answer] <- Attacks],

    %% 2. A replay after the removal, to every node that held the record.
    Gone = <<"trust.gone">>,
    advertise(B2, Gone, ?TTL),
    everywhere(Nodes, Gone, [B2]),
    Captured = filename:join(macula_cluster_harness:dir(Harness), "gone.etf"),
    Holders = [Addr || [<<"held_by">>, Addr] <- hostile(Harness, ["capture", "--service", Gone,
                                                                  "--out", Captured
                                                                  | node_args(Nodes)])],
    ct:log("~ts held by ~ts", [Gone, lists:join(" ", Holders)]),
    ?assert(length(Holders) > 1),
    remove(B2, Gone),
    everywhere(Nodes, Gone, []),
    Replays = hostile(Harness, ["replay", "--service", Gone, "--from", Captured
                                | lists:append([["--node", A] || A <- Holders])]),
    ?assertEqual([[<<"replay">>, A, <<"removed">>] || A <- Holders], Replays),

    %% 3. Floods at B3 and R3; an honest STORE reaches both during the second one.
    First = [flood(Harness, N, 3 * ?SHARE) || N <- [B3, R3]],
    _ = [?assertMatch(#{<<"accepted">> := ?SHARE, <<"over_quota">> := _}, F) || F <- First],
    During = service_held_by(<<"trust.during">>, R2, [B3, R3], Nodes),
    Parent = self(),
    Flooders = [spawn_link(fun() -> Parent ! {self(), flood(Harness, N, 5 * ?STORES_PER_S)} end)
                || N <- [B3, R3]],
    advertise(R2, During, ?TTL),
    Second = [receive {F, Tally} -> Tally after 60000 -> ct:fail(flood_timeout) end
              || F <- Flooders],
    _ = [?assertEqual(0, maps:get(<<"accepted">>, F, 0)) || F <- Second],
    [B3Addr, R3Addr] = [binary_to_list(A) || #{addr := A} <- [B3, R3]],
    ?assertMatch([[<<"held_by">>, _], [<<"held_by">>, _]],
                 hostile(Harness, ["capture", "--service", During, "--out", Captured,
                                   "--node", B3Addr, "--node", R3Addr])),
    _ = [begin
             Refused = fun(Answer) -> maps:get(Answer, A, 0) + maps:get(Answer, B, 0) end,
             ?assertEqual(Refused(<<"over_quota">>), counter(N, refused_quota)),
             ?assertEqual(Refused(<<"rate_limited">>), counter(N, refused_rate)),
             ?assert(Refused(<<"rate_limited">>) > 0),
             ?assert(counter(N, records) =< ?MAX_RECORDS)
         end || {N, A, B} <- lists:zip3([B3, R3], First, Second)],

    %% 4. A hostile replica near the key, in every node's table while every node looks up.
    Injector = spawn_link(fun() ->
                                  Parent ! {self(), hostile(Harness, ["inject", "--service", Victim,
                                                                      "--for", "15"
                                                                      | node_args(Nodes)])}
                          end),
    %% More providers wanted than there are: a lookup asks the key's closest nodes, the replica
    %% among them once a node near it has let it into its table.
    Honest = lists:sort(ids([B1, R1])),
    macula_cluster_harness:wait_each(
      injections_dropped,
      fun(N) ->
              ?assertEqual(Honest, discover(N, Victim, 5)),
              case counter(N, forged_in_replies) of
                  Dropped when Dropped >= 4 -> {ok, Dropped};
                  Dropped -> {wait, Dropped}
              end
      end, Nodes, ?WAIT_MS),
    Injected = receive {Injector, Lines} -> Lines after 60000 -> ct:fail(inject_timeout) end,
    [[<<"served">>, Served]] = [L || [<<"served">> | _] = L <- Injected],
    ?assert(binary_to_integer(Served) >= length(Nodes)),

    %% Every node counted what it refused.
    _ = [begin
             ?assertEqual(2, counter(N, protocol)),
             ?assertEqual({name(N), 4}, {name(N), counter(N, refused_forged)}),
             ?assertEqual({name(N), 2}, {name(N), counter(N, refused_wrong_publisher)}),
             ?assert(counter(N, forged_in_replies) >= 4)
         end || N <- Nodes],
    _ = [?assertEqual({A, 1}, {A, counter(N, refused_replay)})
         || #{addr := A} = N <- Nodes, lists:member(A, Holders)],
    ok.

%%--------------------------------------------------------------------------------------------
%% The cluster
%%--------------------------------------------------------------------------------------------

%% b1, r1, b2, r2, b3, r3, each joining through the node started just before it, as nodes
%% started one after another by hand would: routing tables start partial and fill in as lookups
%% meet peers. Ready once every node has joined (knows at least one peer).
start_cluster(Harness) ->
    Names = ["b1", "r1", "b2", "r2", "b3", "r3"],
    Nodes = lists:foldl(fun(Name, Started) -> Started ++ [start_node(Harness, Name, Started)] end,
                        [], Names),
    ct:log("cluster: ~p", [[{name(N), maps:get(addr, N), binary:encode_hex(maps:get(id, N))}
                            || N <- Nodes]]),
    macula_cluster_harness:wait_each(
      cluster_joined,
      fun(Node) ->
              case peer_count(Node) of
                  0 -> {wait, no_peers};
                  Count -> {ok, Count}
              end
      end, Nodes, ?WAIT_MS),
    Nodes.

start_node(Harness, [$b | _] = Name, Started) ->
    Bootstrap = [binary_to_list(Addr) || #{addr := Addr} <- previous(Started)],
    macula_cluster_harness:start_beam(Harness, Name, #{k => ?K, bootstrap => Bootstrap,
                                                       max_records => ?MAX_RECORDS,
                                                       peer_stores_per_s => ?STORES_PER_S});
start_node(Harness, [$r | _] = Name, Started) ->
    Bootstrap = lists:append([["--bootstrap", binary_to_list(Addr)] || #{addr := Addr} <- previous(Started)]),
    Caps = ["--max-records", integer_to_list(?MAX_RECORDS),
            "--peer-stores-per-s", integer_to_list(?STORES_PER_S)],
    macula_cluster_harness:start_rust(Harness, Name, ["--k", integer_to_list(?K) | Caps ++ Bootstrap]).

%% The node started last, the one the next node joins through.
previous([]) -> [];
previous(Started) -> [lists:last(Started)].

cluster(Config) ->
    proplists:get_value(nodes, Config).

name(#{name := Name}) ->
    Name.

peer_count(#{kind := beam} = Node) ->
    length(beam_call(Node, macula_routing_server, peers, [macula_routing_server]));
peer_count(#{kind := rust} = Node) ->
    status_integer(Node, <<"peers">>).

%% A count in a Rust node's `ctl status --json'.
status_integer(Node, Field) ->
    {0, Json} = ctl(Node, ["status", "--json"]),
    {match, [Count]} = re:run(Json, <<"\"", Field/binary, "\":([0-9]+)">>,
                              [{capture, all_but_first, list}]),
    list_to_integer(Count).

%% Waits until `Observe()' returns `Expected'.
wait_for(What, Observe, Expected) ->
    macula_cluster_harness:wait_until(
      What,
      fun() ->
              case Observe() of
                  Expected -> {ok, Expected};
                  Other -> {wait, Other}
              end
      end, ?WAIT_MS).

%%--------------------------------------------------------------------------------------------
%% The hostile peer
%%--------------------------------------------------------------------------------------------

%% `hostile_peer Args...': its output lines, split into words. It must exit 0.
hostile(Harness, Args) ->
    {Status, Output} = macula_cluster_harness:hostile_peer(Harness, [to_list(A) || A <- Args],
                                                           60000),
    ct:log("hostile_peer ~ts: ~ts", [lists:join(" ", [to_list(A) || A <- Args]), Output]),
    ?assertEqual(0, Status),
    [binary:split(Line, <<" ">>, [global]) || Line <- binary:split(Output, <<"\n">>, [global, trim_all])].

node_args(Nodes) ->
    lists:append([["--node", binary_to_list(Addr)] || #{addr := Addr} <- Nodes]).

%% `Count' STOREs of new records of the hostile peer's own at `Node' (from one identity in the
%% whole case): how many got each answer.
flood(Harness, #{addr := Addr}, Count) ->
    Identity = filename:join(macula_cluster_harness:dir(Harness), "flooder.key"),
    [[<<"flood">>, Addr | Counts]] = hostile(Harness, ["flood", "--records", integer_to_list(Count),
                                                       "--node", binary_to_list(Addr),
                                                       "--identity", Identity]),
    maps:from_list([{Answer, binary_to_integer(N)}
                    || C <- Counts, [Answer, N] <- [binary:split(C, <<"=">>)]]).

%% A counter of `stats/1' (BEAM) or `ctl status' (Rust).
counter(#{kind := beam} = Node, Name) ->
    maps:get(Name, beam_call(Node, macula_routing_server, stats, [macula_routing_server]));
counter(#{kind := rust} = Node, Name) ->
    status_integer(Node, atom_to_binary(Name)).

%%--------------------------------------------------------------------------------------------
%% Advertising and discovery on either kind of node
%%--------------------------------------------------------------------------------------------

advertise(Node, Service, Ttl) ->
    ok = macula_cluster_harness:advertise(Node, Service, Ttl).

%% Published once, never refreshed.
advertise_once(#{kind := rust} = Node, Service, Ttl) ->
    ctl_ok(Node, ["advertise", Service, endpoint(Node), "--ttl", integer_to_list(Ttl), "--once"]).

remove(#{kind := beam, id := Id} = Node, Service) ->
    ok = beam_call(Node, macula_service_registry, remove_from_dht,
                   [macula_routing_server, Service, Id]);
remove(#{kind := rust} = Node, Service) ->
    ctl_ok(Node, ["remove", Service]).

endpoint(#{name := Name}) ->
    "https://" ++ Name ++ ".test:443".

ctl_ok(Node, Args) ->
    {0, Output} = ctl(Node, [to_list(A) || A <- Args]),
    ct:log("~ts: ~ts", [name(Node), Output]).

%% The sorted node ids of the providers of `Service' that `Node' finds, looking for `Want'.
discover(Node, Service, Want) ->
    {ok, Ids} = macula_cluster_harness:discover(Node, Service, Want),
    Ids.

%% Within `Timeout' ms, every node in `Nodes' finds exactly the providers `Providers' of `Service'.
everywhere(Nodes, Service, Providers) ->
    everywhere(Nodes, Service, Providers, ?WAIT_MS).

everywhere(Nodes, Service, Providers, Timeout) ->
    Expected = lists:sort(ids(Providers)),
    Want = max(1, length(Expected)),
    Check = fun(Node) ->
                    case discover(Node, Service, Want) of
                        Expected -> {ok, Expected};
                        Found -> {wait, {found, [hex_prefix(Id) || Id <- Found]}}
                    end
            end,
    try
        macula_cluster_harness:wait_each({Service, [name(P) || P <- Providers]}, Check, Nodes,
                                         Timeout)
    catch
        exit:{test_case_failed, _} = Failure:Stack ->
            log_placement(Nodes, Service),
            erlang:raise(exit, Failure, Stack)
    end,
    ok.

%% Where the records of `Service' are, for the log of a failed wait: the ids, the nodes by
%% distance to the key, what each BEAM node holds and how many keys each Rust node holds.
log_placement(Nodes, Service) ->
    Key = macula_service_registry:service_key(Service),
    Held = [{name(N), case N of
                          #{kind := beam} ->
                              case beam_call(N, macula_routing_server, get_local,
                                             [macula_routing_server, Key]) of
                                  {ok, Providers} ->
                                      [hex_prefix(Id) || #{node_id := Id} <- Providers];
                                  Other -> Other
                              end;
                          #{kind := rust} ->
                              {keys, status_integer(N, <<"keys">>)}
                      end}
            || N <- Nodes],
    ct:log("placement of ~ts: ids ~p, nodes closest first ~p, held ~p",
           [Service, [{name(N), hex_prefix(Id)} || #{id := Id} = N <- Nodes],
            [name(N) || N <- closest(Key, Nodes, length(Nodes))], Held]).

hex_prefix(Id) ->
    binary_to_list(binary:part(binary:encode_hex(Id), 0, 8)).

%%--------------------------------------------------------------------------------------------
%% Replica placement
%%--------------------------------------------------------------------------------------------

%% Of the names `<Prefix>.<advertiser>.<N>' (N < 200), the first with the most of `Wanted' among
%% its replicas.
service_held_by(Prefix, Advertiser, Wanted, Nodes) ->
    Scored = [{-length([V || V <- Wanted, lists:member(V, replicas(Advertiser, S, Nodes))]), N, S}
              || N <- lists:seq(0, 199),
                 S <- [iolist_to_binary([Prefix, ".", name(Advertiser), ".", integer_to_list(N)])]],
    {_, _, Service} = lists:min(Scored),
    Service.

%% The nodes an advertiser's STORE of `Service' reaches when every table is complete: the k
%% nodes other than itself closest to the key (by XOR distance of the ids).
replicas(Advertiser, Service, Nodes) ->
    closest(macula_service_registry:service_key(Service), Nodes -- [Advertiser], ?K).

closest(<<K:256>>, Nodes, Count) ->
    Sorted = lists:sort([{Id bxor K, Node} || #{id := <<Id:256>>} = Node <- Nodes]),
    [Node || {_, Node} <- lists:sublist(Sorted, Count)].

%% Within `?WAIT_MS', a victim holds a replica of every one of `Services' (so killing it takes
%% one away). A Rust node's status counts its keys; the case stores no other key.
held_by_victim(#{kind := beam} = Victim, Services) ->
    Keys = [macula_service_registry:service_key(S) || S <- Services],
    wait_for({name(Victim), holds, Services},
             fun() ->
                     [K || K <- Keys, beam_call(Victim, macula_routing_server, get_local,
                                                [macula_routing_server, K]) =:= not_found]
             end, []);
held_by_victim(#{kind := rust} = Victim, Services) ->
    wait_for({name(Victim), holds, Services},
             fun() -> status_integer(Victim, <<"keys">>) end, length(Services)).

to_list(Value) when is_binary(Value) -> binary_to_list(Value);
to_list(Value) when is_list(Value) -> Value.

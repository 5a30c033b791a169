%% @doc The `telemetry' events of `macula_routing_server' between two nodes: this VM's server,
%% with the test double `telemetry' (test/telemetry.erl), and a server in a peer VM, which has
%% no `telemetry' at all and works with it as with any peer. The peer joining and leaving, a
%% lookup that asks it, a store replicated to it and the STOREs of its own that this node
%% refuses each come as their event, with the measurements and metadata of docs/telemetry.md.
%%
%% `end_per_testcase' detaches the handler and stops this VM's server, the peer VM and its
%% server, pass or fail.
-module(macula_telemetry_SUITE).

-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_testcase/2, end_per_testcase/2]).
-export([events_between_two_nodes/1]).
-export([forward/4]).

-define(SERVER, macula_routing_server).
-define(EVENTS, [[macula_dht, lookup, stop], [macula_dht, store, stop], [macula_dht, peer, up],
                 [macula_dht, peer, down], [macula_dht, request, refused]]).
-define(WAIT_MS, 10000).
%% A stopped peer leaves the table after three failures in a row, the last two the probes 5 s
%% and 10 s after it became a suspect.
-define(PEER_DOWN_WAIT_MS, 40000).
%% This node's store: 100 records, 10 % of them for one other publisher.
-define(MAX_RECORDS, 100).
-define(SHARE_PCT, 10).
%% Records the peer publishes: more than its share here.
-define(PUBLISHED, 30).

all() ->
    [events_between_two_nodes].

suite() ->
    [{timetrap, {minutes, 2}}].

init_per_testcase(_Case, Config) ->
    [{harness, macula_cluster_harness:start()}, {handler, {?MODULE, make_ref()}} | Config].

end_per_testcase(_Case, Config) ->
    _ = telemetry:detach(proplists:get_value(handler, Config)),
    catch gen_server:stop(?SERVER),
    macula_cluster_harness:stop_all(proplists:get_value(harness, Config)).

%%--------------------------------------------------------------------------------------------
%% The case
%%--------------------------------------------------------------------------------------------

events_between_two_nodes(Config) ->
    Harness = proplists:get_value(harness, Config),
    ok = telemetry:attach_many(proplists:get_value(handler, Config), ?EVENTS,
                               fun ?MODULE:forward/4, self()),
    {ok, _} = ?SERVER:start_link(auto, #{listen => "127.0.0.1:0", request_timeout_ms => 500,
                                         lookup_timeout_ms => 3000, max_records => ?MAX_RECORDS,
                                         publisher_share_pct => ?SHARE_PCT}),
    Peer = macula_cluster_harness:start_beam(Harness, "b", #{bootstrap => [addr()]}),
    #{id := PeerId, addr := PeerAddr} = Peer,
    ?assertEqual(non_existing, macula_cluster_harness:beam_call(Peer, code, which, [telemetry])),

    %% The peer joins.
    {#{count := 1}, Up} = next_event([macula_dht, peer, up], ?WAIT_MS),
    ?assertMatch(#{node_id := PeerId, address := {{127, 0, 0, 1}, _}}, Up),
    ?assertEqual(PeerAddr, addr(maps:get(address, Up))),

    %% A lookup of a key nobody holds asks the peer.
    Missing = crypto:strong_rand_bytes(32),
    {ok, []} = ?SERVER:find_value(?SERVER, Missing, 3),
    {Asked, AskedMeta} = lookup_event(Missing),
    ct:log("lookup of a missing key: ~p ~p", [Asked, AskedMeta]),
    ?assertMatch(#{duration := D, hops := Hops, providers := 0}
                   when D > 0 andalso Hops >= 1, Asked),
    ?assertMatch(#{kind := find_value, timed_out := false, queried := Q, failed := 0}
                   when Q >= 1, AskedMeta),

    %% A store published here reaches the peer.
    Key = crypto:strong_rand_bytes(32),
    Provider = #{node_id => <<"provider-1">>, endpoint => <<"https://provider-1:1">>},
    ok = ?SERVER:store(?SERVER, Key, Provider),
    {#{duration := StoreDuration}, StoreMeta} = next_event([macula_dht, store, stop], ?WAIT_MS),
    ?assert(is_integer(StoreDuration) andalso StoreDuration >= 0),
    ?assertEqual(#{key => Key, kind => replicated, result => ok}, StoreMeta),
    macula_cluster_harness:wait_until(
      replicated,
      fun() ->
              case macula_cluster_harness:beam_call(Peer, ?SERVER, get_local, [?SERVER, Key]) of
                  {ok, [#{node_id := <<"provider-1">>}]} -> {ok, held};
                  Other -> {wait, Other}
              end
      end, ?WAIT_MS),

    %% The peer publishes more than its share of this node's store: the STOREs refused here
    %% come as refusal events, as many as `stats/1' counts.
    Keys = [crypto:strong_rand_bytes(32) || _ <- lists:seq(1, ?PUBLISHED)],
    _ = [ok = macula_cluster_harness:beam_call(Peer, ?SERVER, store,
                                               [?SERVER, K, #{node_id => <<"flood">>}])
         || K <- Keys],
    Refused = refusals_until_counted(refused_quota, 0, erlang:monotonic_time(millisecond)
                                                        + ?WAIT_MS),
    ct:log("refused over quota: ~b", [Refused]),
    ?assert(Refused >= ?PUBLISHED - ?MAX_RECORDS * ?SHARE_PCT div 100),

    %% A record this node refused is the peer's only: a lookup finds it there.
    [NotHeld | _] = [K || K <- Keys, ?SERVER:get_local(?SERVER, K) =:= not_found],
    {ok, [#{node_id := <<"flood">>}]} = ?SERVER:find_value(?SERVER, NotHeld, 1),
    {Found, FoundMeta} = lookup_event(NotHeld),
    ?assertMatch(#{providers := 1, hops := FoundHops} when FoundHops >= 1, Found),
    ?assertMatch(#{kind := find_value, timed_out := false}, FoundMeta),

    %% The peer's server stops: lookups fail on it until it is dropped from the table.
    ok = macula_cluster_harness:beam_call(Peer, gen_server, stop, [?SERVER]),
    {#{count := 1}, Down} = peer_down(PeerId, erlang:monotonic_time(millisecond)
                                                + ?PEER_DOWN_WAIT_MS),
    ?assertMatch(#{node_id := PeerId, address := {{127, 0, 0, 1}, _}}, Down).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

forward(Event, Measurements, Metadata, Pid) ->
    Pid ! {telemetry_event, Event, Measurements, Metadata}.

next_event(Event, WaitMs) ->
    receive
        {telemetry_event, Event, Measurements, Metadata} -> {Measurements, Metadata}
    after WaitMs ->
        ct:fail({no_event, Event})
    end.

%% The lookup event of `Key' (lookups of other ids, such as the table's refreshes, are skipped).
lookup_event(Key) ->
    receive
        {telemetry_event, [macula_dht, lookup, stop], Measurements, #{key := Key} = Metadata} ->
            {Measurements, Metadata}
    after ?WAIT_MS ->
        ct:fail({no_lookup_event, Key})
    end.

%% Refusal events of `Reason' until their counts add up to this node's counter of it (and it
%% is not zero); their sum.
refusals_until_counted(Reason, Sum, Deadline) ->
    #{Reason := Counted} = ?SERVER:stats(?SERVER),
    ?assert(Sum =< Counted),
    case Counted > 0 andalso Sum =:= Counted of
        true ->
            Sum;
        false ->
            Left = Deadline - erlang:monotonic_time(millisecond),
            Left > 0 orelse ct:fail({refusals, #{events => Sum, counted => Counted}}),
            receive
                {telemetry_event, [macula_dht, request, refused], #{count := Count},
                 #{reason := Reason}} ->
                    refusals_until_counted(Reason, Sum + Count, Deadline)
            after min(Left, 500) ->
                refusals_until_counted(Reason, Sum, Deadline)
            end
    end.

%% Looks up missing keys (each asks the stopped peer, whose failures make it a suspect, then
%% drop it) until the peer's `down' event comes.
peer_down(PeerId, Deadline) ->
    {ok, []} = ?SERVER:find_value(?SERVER, crypto:strong_rand_bytes(32), 3),
    receive
        {telemetry_event, [macula_dht, peer, down], Measurements, #{node_id := PeerId} = Info} ->
            {Measurements, Info}
    after 1000 ->
        erlang:monotonic_time(millisecond) < Deadline orelse ct:fail(no_peer_down_event),
        peer_down(PeerId, Deadline)
    end.

%% This VM's server's address, or an address of the table, as "127.0.0.1:Port".
addr() ->
    {ok, Address} = ?SERVER:address(?SERVER),
    binary_to_list(addr(Address)).

addr({Ip, Port}) ->
    iolist_to_binary([inet:ntoa(Ip), ":", integer_to_list(Port)]).

%% @doc EUnit tests of the `telemetry' events of `macula_routing_server' on one VM, with the test
%% double `telemetry' (test/telemetry.erl): store events on a single node and in network mode,
%% lookup events of a networked node with no subscriber, refusal events from the counters, a
%% failing handler that changes nothing, and a server started without `telemetry' that emits
%% nothing and asks the NIF for no events. Peer events, and lookups and refusals between two
%% nodes, are in `macula_telemetry_SUITE'.
-module(macula_dht_telemetry_tests).

-include_lib("eunit/include/eunit.hrl").

-export([forward/4, fail/4]).

-define(SERVER, macula_routing_server).
-define(LOOPBACK, {127, 0, 0, 1}).
-define(NETWORKED, #{listen => {?LOOPBACK, 0}, lookup_timeout_ms => 1000}).
-define(EVENTS, [[macula_dht, lookup, stop], [macula_dht, store, stop], [macula_dht, peer, up],
                 [macula_dht, peer, down], [macula_dht, request, refused]]).
-define(WAIT_MS, 2000).
%% How long to wait for an event that must not come.
-define(QUIET_MS, 300).

%%--------------------------------------------------------------------------------------------
%% The double is the tests' own
%%--------------------------------------------------------------------------------------------

%% The application neither ships nor needs `telemetry': the double is compiled with the tests,
%% outside the application's ebin, and is not among its modules or applications.
telemetry_is_not_part_of_the_application_test() ->
    _ = application:load(macula_dht),
    {ok, Modules} = application:get_key(macula_dht, modules),
    {ok, Applications} = application:get_key(macula_dht, applications),
    ?assert(lists:member(macula_dht_telemetry, Modules)),
    ?assertNot(lists:member(telemetry, Modules)),
    ?assertNot(lists:member(telemetry, Applications)),
    Ebin = filename:dirname(code:which(?SERVER)),
    ?assertNot(filelib:is_regular(filename:join(Ebin, "telemetry.beam"))),
    ?assertNotEqual(Ebin, filename:dirname(code:which(telemetry))).

detect_test() ->
    ?assertEqual(telemetry, macula_dht_telemetry:detect()),
    without_telemetry(fun() -> ?assertEqual(none, macula_dht_telemetry:detect()) end),
    ?assertEqual(telemetry, macula_dht_telemetry:detect()).

%%--------------------------------------------------------------------------------------------
%% Stores
%%--------------------------------------------------------------------------------------------

%% Every door of a store emits one event, in whichever process ran the store; reads emit none.
single_node_stores_test() ->
    with_server(#{}, fun(S) ->
        Provider = #{node_id => <<"p1">>, endpoint => <<"https://p1:1">>},
        ok = ?SERVER:store_local(S, <<"k1">>, Provider),
        assert_store(<<"k1">>, local, ok),
        %% Alone, store/3 replicates nowhere: the same local store.
        ok = ?SERVER:store(S, <<"k2">>, Provider),
        assert_store(<<"k2">>, local, ok),
        ok = gen_server:call(S, {store_local, <<"k3">>, Provider}),
        assert_store(<<"k3">>, local, ok),
        ok = gen_server:cast(S, {store, <<"k4">>, Provider}),
        assert_store(<<"k4">>, local, ok),
        #{result := ok} = ?SERVER:handle_message(S, #{type => store, key => <<"k5">>,
                                                      value => Provider}),
        assert_store(<<"k5">>, local, ok),
        %% A refused store is one too, with the caller's error.
        {error, Why} = ?SERVER:store_local(S, <<"k6">>, not_a_map),
        assert_store(<<"k6">>, local, {error, Why}),
        {ok, [Provider]} = ?SERVER:get_local(S, <<"k1">>),
        {ok, [Provider]} = ?SERVER:find_value(S, <<"k1">>, 20),
        ok = ?SERVER:delete_local(S, <<"k1">>, <<"p1">>),
        no_event()
    end).

%% In network mode `store/3' publishes: a replicated store; `store_local/3' stays local.
networked_stores_test() ->
    with_server(?NETWORKED, fun(S) ->
        Provider = #{node_id => <<"p1">>, endpoint => <<"https://p1:1">>},
        ok = ?SERVER:store(S, <<"k1">>, Provider),
        assert_store(<<"k1">>, replicated, ok),
        ok = ?SERVER:store_local(S, <<"k2">>, Provider),
        assert_store(<<"k2">>, local, ok),
        Other = #{node_id => <<7:256>>},
        {error, {wrong_publisher, _}} = Refused = ?SERVER:store(S, <<"k3">>, Other),
        assert_store(<<"k3">>, replicated, Refused),
        no_event()
    end).

%%--------------------------------------------------------------------------------------------
%% Lookups
%%--------------------------------------------------------------------------------------------

%% A networked node alone still runs a lookup on a miss (nobody to ask): its event comes with no
%% process subscribed, from the summary the NIF sent the server.
lookup_event_without_subscribers_test() ->
    with_server(?NETWORKED, fun(S) ->
        Key = crypto:strong_rand_bytes(32),
        {ok, []} = ?SERVER:find_value(S, Key, 20),
        {Measurements, Metadata} = next_event([macula_dht, lookup, stop]),
        ?assertMatch(#{duration := D, hops := 0, providers := 0} when is_integer(D) andalso D >= 0,
                     Measurements),
        ?assertEqual(#{key => Key, kind => find_value, timed_out => false, queried => 0,
                       failed => 0}, Metadata),
        %% A local hit runs no lookup.
        ok = ?SERVER:store_local(S, Key, #{node_id => <<"p">>}),
        _ = next_event([macula_dht, store, stop]),
        {ok, [_]} = ?SERVER:find_value(S, Key, 1),
        no_event()
    end).

%% With telemetry the NIF sends the server lookup summaries although nobody subscribed.
lookup_summaries_reach_the_server_test() ->
    with_server(?NETWORKED, fun(S) ->
        ?assertEqual([lookup], summaries_received(S))
    end).

%%--------------------------------------------------------------------------------------------
%% Refusals
%%--------------------------------------------------------------------------------------------

%% One event per refusal counter that grew, with the growth; the counts to compare with next.
refusals_report_what_grew_test() ->
    with_handler(fun() ->
        Stats0 = #{refused_quota => 3, refused_rate => 0, bad_requests => 1, records => 9},
        Seen0 = macula_dht_telemetry:refusals(telemetry, Stats0, #{}),
        ?assertEqual(lists:sort([{refused_quota, 3}, {bad_requests, 1}]),
                     lists:sort([refused(next_event([macula_dht, request, refused])),
                                 refused(next_event([macula_dht, request, refused]))])),
        ?assertEqual(#{refused_quota => 3, refused_rate => 0, bad_requests => 1}, Seen0),
        Stats1 = Stats0#{refused_quota := 5, refused_forged => 0, records := 12},
        Seen1 = macula_dht_telemetry:refusals(telemetry, Stats1, Seen0),
        ?assertEqual({refused_quota, 2}, refused(next_event([macula_dht, request, refused]))),
        ?assertEqual(Seen1, macula_dht_telemetry:refusals(telemetry, Stats1, Seen1)),
        ?assertEqual(Seen1, macula_dht_telemetry:refusals(none, Stats1#{refused_rate := 4}, Seen1)),
        no_event()
    end).

%% A networked server alone reads its counters on each expiry tick: nobody refused anything.
no_refusal_no_event_test() ->
    with_server(?NETWORKED#{expire_interval_ms => 10}, fun(S) ->
        #{bad_requests := 0, refused_quota := 0} = ?SERVER:stats(S),
        timer:sleep(100),
        no_event()
    end).

%%--------------------------------------------------------------------------------------------
%% A failing handler
%%--------------------------------------------------------------------------------------------

%% The double lets a handler's failure out of `execute/3'; the server and its callers carry on
%% as if nothing was attached.
failing_handler_changes_nothing_test() ->
    catch gen_server:stop(?SERVER),
    {ok, S} = ?SERVER:start_link(auto, ?NETWORKED),
    unlink(S),
    ok = telemetry:attach_many(failing, ?EVENTS, fun ?MODULE:fail/4, undefined),
    try
        Provider = #{node_id => <<"p1">>},
        ?assertEqual(ok, ?SERVER:store_local(S, <<"k">>, Provider)),
        ?assertEqual(ok, gen_server:call(S, {store_local, <<"k">>, Provider})),
        ?assertEqual(ok, ?SERVER:store(S, <<"published">>, Provider)),
        ?assertEqual({ok, [Provider]}, ?SERVER:get_local(S, <<"published">>)),
        ?assertEqual([lookup], summaries_received(S)),
        ?assertEqual({ok, []}, ?SERVER:find_value(S, crypto:strong_rand_bytes(32), 3)),
        ?assertEqual({ok, [Provider]}, ?SERVER:get_local(S, <<"k">>)),
        ?assert(is_process_alive(S)),
        ?assertEqual(S, whereis(?SERVER))
    after
        ok = telemetry:detach(failing),
        catch gen_server:stop(S)
    end.

fail(Event, _Measurements, _Metadata, _Config) ->
    error({handler_failed, Event}).

%%--------------------------------------------------------------------------------------------
%% Without telemetry
%%--------------------------------------------------------------------------------------------

%% A server started while `telemetry' cannot be loaded emits nothing, though a handler is
%% attached, and asks the NIF for no lookup summaries; one started once it can be emits again.
without_telemetry_nothing_is_emitted_test() ->
    with_handler(fun() ->
        without_telemetry(fun() ->
            with_started_server(?NETWORKED, fun(S) ->
                ok = ?SERVER:store_local(S, <<"k">>, #{node_id => <<"p">>}),
                ok = ?SERVER:store(S, <<"k">>, #{node_id => <<"q">>}),
                ?assertEqual([], summaries_received(S)),
                ?assertEqual(false, code:is_loaded(telemetry))
            end)
        end),
        no_event(),
        with_started_server(?NETWORKED, fun(S) ->
            ok = ?SERVER:store_local(S, <<"k">>, #{node_id => <<"p">>}),
            assert_store(<<"k">>, local, ok)
        end)
    end).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

%% A server started with `Config' and a handler of every event attached, both gone afterwards.
with_server(Config, Test) ->
    with_handler(fun() -> with_started_server(Config, Test) end).

with_started_server(Config, Test) ->
    catch gen_server:stop(?SERVER),
    {ok, S} = ?SERVER:start_link(auto, Config),
    unlink(S),
    try Test(S)
    after catch gen_server:stop(S)
    end.

%% Every event is sent to the calling process as `{telemetry_event, Event, Measurements,
%% Metadata}' while `Test' runs; those it left unread are dropped afterwards.
with_handler(Test) ->
    Id = {?MODULE, make_ref()},
    ok = telemetry:attach_many(Id, ?EVENTS, fun ?MODULE:forward/4, self()),
    try Test()
    after
        ok = telemetry:detach(Id),
        flush()
    end.

flush() ->
    receive {telemetry_event, _, _, _} -> flush()
    after 0 -> ok
    end.

forward(Event, Measurements, Metadata, Pid) ->
    Pid ! {telemetry_event, Event, Measurements, Metadata}.

next_event(Event) ->
    receive
        {telemetry_event, Event, Measurements, Metadata} -> {Measurements, Metadata}
    after ?WAIT_MS ->
        error({no_event, Event})
    end.

no_event() ->
    receive
        {telemetry_event, _, _, _} = Unexpected -> error({unexpected, Unexpected})
    after ?QUIET_MS ->
        ok
    end.

assert_store(Key, Kind, Result) ->
    {Measurements, Metadata} = next_event([macula_dht, store, stop]),
    ?assertMatch(#{duration := D} when is_integer(D) andalso D >= 0, Measurements),
    ?assertEqual(#{key => Key, kind => Kind, result => Result}, Metadata).

refused({#{count := Count}, #{reason := Reason}}) ->
    {Reason, Count}.

%% The network events the server receives from the NIF while a lookup of a missing key runs:
%% `[lookup]' when the NIF sends lookup summaries, `[]' when it does not.
summaries_received(S) ->
    erlang:trace(S, true, ['receive']),
    try
        {ok, []} = ?SERVER:find_value(S, crypto:strong_rand_bytes(32), 3),
        timer:sleep(?QUIET_MS),
        summaries_traced(S)
    after
        erlang:trace(S, false, ['receive'])
    end.

summaries_traced(S) ->
    receive
        {trace, S, 'receive', {macula_dht_net, {lookup, _}}} -> [lookup | summaries_traced(S)];
        {trace, S, 'receive', _Other} -> summaries_traced(S)
    after 0 ->
        []
    end.

%% Runs `Test' with the double out of reach: its directory off the code path and the module
%% unloaded; both come back afterwards.
without_telemetry(Test) ->
    Dir = filename:dirname(code:which(telemetry)),
    Path = code:get_path(),
    true = code:del_path(Dir),
    unload(telemetry),
    try
        ?assertEqual({error, nofile}, code:ensure_loaded(telemetry)),
        Test()
    after
        true = code:set_path(Path),
        {module, telemetry} = code:ensure_loaded(telemetry)
    end.

unload(Module) ->
    _ = code:purge(Module),
    _ = code:delete(Module),
    _ = code:purge(Module),
    ok.

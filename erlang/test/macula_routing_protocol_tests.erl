-module(macula_routing_protocol_tests).

-include_lib("eunit/include/eunit.hrl").

-define(M, macula_routing_protocol).

-define(FIELDS, [type, target, key, value, nodes, result, node_id, address, endpoint]).
-define(TAGS, [find_node, find_node_reply, store, find_value, find_value_reply, value,
               nodes, error]).

target() -> <<7:256>>.
key() -> crypto:hash(sha256, <<"svc.echo">>).
provider() -> #{node_id => <<1:256>>, endpoint => <<"https://a:9443">>, ttl => 300}.
peer(N) -> #{node_id => <<N:256>>, address => {{127, 0, 0, 1}, 9000 + N}}.

%%--------------------------------------------------------------------
%% Encoding and round trips
%%--------------------------------------------------------------------

encode_shapes_test_() ->
    Endpoint = #{node_id => <<2:256>>, endpoint => <<"https://b:9443">>},
    [?_assertEqual(#{type => find_node, target => target()}, ?M:encode_find_node(target())),
     ?_assertEqual(#{type => find_node_reply, nodes => [peer(1), Endpoint]},
                   ?M:encode_find_node_reply([peer(1), Endpoint])),
     ?_assertEqual(#{type => find_node_reply, nodes => []}, ?M:encode_find_node_reply([])),
     ?_assertEqual(#{type => store, key => key(), value => provider()},
                   ?M:encode_store(key(), provider())),
     ?_assertEqual(#{type => find_value, key => key()}, ?M:encode_find_value(key())),
     ?_assertEqual(#{type => find_value_reply, result => value, value => [provider()]},
                   ?M:encode_find_value_reply({value, [provider()]})),
     ?_assertEqual(#{type => find_value_reply, result => nodes, nodes => [peer(3)]},
                   ?M:encode_find_value_reply({nodes, [peer(3)]}))].

encode_node_info_test_() ->
    Full = #{node_id => <<1:256>>, address => <<"10.0.0.1:9443">>,
             endpoint => <<"https://h:9443">>, last_seen => 123, extra => x},
    [?_assertEqual(maps:without([last_seen, extra], Full), ?M:encode_node_info(Full)),
     ?_assertEqual(#{node_id => <<"n">>}, ?M:encode_node_info(#{node_id => <<"n">>})),
     ?_assertEqual(peer(4), ?M:encode_node_info(peer(4))),
     ?_assertEqual(#{node_id => <<"n">>, endpoint => <<"e">>},
                   ?M:encode_node_info(#{<<"node_id">> => <<"n">>, <<"endpoint">> => <<"e">>})),
     ?_assertError(badarg, ?M:encode_node_info(#{address => <<"a">>})),
     ?_assertError(badarg, ?M:encode_node_info(#{node_id => 42})),
     ?_assertError(badarg, ?M:encode_node_info(<<"n">>))].

encoders_reject_bad_shapes_test_() ->
    [?_assertError(function_clause, ?M:encode_find_node("target")),
     ?_assertError(function_clause, ?M:encode_find_node_reply(peer(1))),
     ?_assertError(badarg, ?M:encode_find_node_reply([#{}])),
     ?_assertError(function_clause, ?M:encode_store(key, provider())),
     ?_assertError(function_clause, ?M:encode_store(key(), not_a_map)),
     ?_assertError(function_clause, ?M:encode_find_value(42)),
     ?_assertError(function_clause, ?M:encode_find_value_reply({value, [not_a_map]})),
     ?_assertError(function_clause, ?M:encode_find_value_reply({value, provider()})),
     ?_assertError(function_clause, ?M:encode_find_value_reply({other, []}))].

round_trip_test_() ->
    Nodes = [peer(1), peer(2)],
    [?_assertEqual({ok, target()}, ?M:decode_find_node(?M:encode_find_node(target()))),
     ?_assertEqual({ok, Nodes}, ?M:decode_find_node_reply(?M:encode_find_node_reply(Nodes))),
     ?_assertEqual({ok, {key(), provider()}},
                   ?M:decode_store(?M:encode_store(key(), provider()))),
     ?_assertEqual({ok, key()}, ?M:decode_find_value(?M:encode_find_value(key()))),
     ?_assertEqual({ok, {value, [provider()]}},
                   ?M:decode_find_value_reply(?M:encode_find_value_reply({value, [provider()]}))),
     ?_assertEqual({ok, {value, []}},
                   ?M:decode_find_value_reply(?M:encode_find_value_reply({value, []}))),
     ?_assertEqual({ok, {nodes, Nodes}},
                   ?M:decode_find_value_reply(?M:encode_find_value_reply({nodes, Nodes}))),
     ?_assertEqual({ok, peer(5)}, ?M:decode_node_info(?M:encode_node_info(peer(5))))].

%%--------------------------------------------------------------------
%% Decoding: binary names, legacy senders, wrong shapes
%%--------------------------------------------------------------------

binary_names_test_() ->
    BinNode = #{<<"node_id">> => <<1:256>>, <<"address">> => <<"h:1">>},
    [?_assertEqual({ok, target()},
                   ?M:decode_find_node(#{<<"type">> => <<"find_node">>,
                                         <<"target">> => target()})),
     ?_assertEqual({ok, target()},
                   ?M:decode_find_node(#{type => <<"find_node">>, <<"target">> => target()})),
     ?_assertEqual({ok, target()},
                   ?M:decode_find_node(#{<<"type">> => find_node, target => target()})),
     ?_assertEqual({ok, {key(), #{<<"node_id">> => <<1>>}}},
                   ?M:decode_store(#{<<"type">> => <<"store">>, <<"key">> => key(),
                                     <<"value">> => #{<<"node_id">> => <<1>>}})),
     ?_assertEqual({ok, key()},
                   ?M:decode_find_value(#{<<"type">> => <<"find_value">>, <<"key">> => key()})),
     ?_assertEqual({ok, [#{node_id => <<1:256>>, address => <<"h:1">>}]},
                   ?M:decode_find_node_reply(#{<<"type">> => <<"find_node_reply">>,
                                               <<"nodes">> => [BinNode]})),
     ?_assertEqual({ok, {value, [provider()]}},
                   ?M:decode_find_value_reply(#{<<"type">> => <<"find_value_reply">>,
                                                <<"result">> => <<"value">>,
                                                <<"value">> => [provider()]})),
     ?_assertEqual({ok, {nodes, [#{node_id => <<1:256>>, address => <<"h:1">>}]}},
                   ?M:decode_find_value_reply(#{<<"type">> => <<"find_value_reply">>,
                                                <<"result">> => <<"nodes">>,
                                                <<"nodes">> => [BinNode]})),
     %% The atom name wins when a map carries both forms.
     ?_assertEqual({ok, <<"atom">>},
                   ?M:decode_find_value(#{type => find_value, key => <<"atom">>,
                                          <<"key">> => <<"binary">>}))].

legacy_untyped_test_() ->
    [?_assertEqual({find_node, target()}, ?M:classify(#{<<"target">> => target()})),
     ?_assertEqual({find_node, target()}, ?M:classify(#{target => target()})),
     ?_assertEqual({find_value, key()}, ?M:classify(#{<<"key">> => key()})),
     ?_assertEqual({store, key(), provider()},
                   ?M:classify(#{<<"key">> => key(), <<"value">> => provider()})),
     ?_assertEqual({ok, target()}, ?M:decode_find_node(#{<<"target">> => target()})),
     ?_assertEqual({ok, key()}, ?M:decode_find_value(#{key => key()})),
     ?_assertEqual({ok, {key(), provider()}},
                   ?M:decode_store(#{key => key(), value => provider()})),
     ?_assertEqual({error, unknown_message}, ?M:classify(#{})),
     ?_assertEqual({error, unknown_message}, ?M:classify(#{<<"value">> => provider()})),
     ?_assertEqual({error, unknown_message}, ?M:classify(#{<<"target">> => 42})),
     ?_assertEqual({error, unknown_message},
                   ?M:classify(#{<<"key">> => key(), <<"value">> => <<"not a map">>}))].

classify_test_() ->
    [?_assertEqual({find_node, target()}, ?M:classify(?M:encode_find_node(target()))),
     ?_assertEqual({store, key(), provider()},
                   ?M:classify(?M:encode_store(key(), provider()))),
     ?_assertEqual({find_value, key()}, ?M:classify(?M:encode_find_value(key()))),
     ?_assertEqual({find_value, key()},
                   ?M:classify(#{<<"type">> => <<"find_value">>, <<"key">> => key()})),
     %% Replies and errors are not requests.
     ?_assertEqual({error, unknown_message}, ?M:classify(?M:encode_find_node_reply([]))),
     ?_assertEqual({error, unknown_message},
                   ?M:classify(?M:encode_find_value_reply({value, []}))),
     ?_assertEqual({error, unknown_message},
                   ?M:classify(#{type => error, reason => unknown_message})),
     ?_assertEqual({error, unknown_message}, ?M:classify(#{type => ping})),
     ?_assertEqual({error, unknown_message}, ?M:classify(#{<<"type">> => <<"ping">>})),
     %% A known type with an unknown tag value is not a legacy message.
     ?_assertEqual({error, unknown_message},
                   ?M:classify(#{type => bogus, target => target()})),
     ?_assertEqual({error, unknown_message}, ?M:classify(not_a_map)),
     ?_assertEqual({error, unknown_message}, ?M:classify([{type, find_node}]))].

predicates_test_() ->
    FindNode = #{<<"type">> => <<"find_node">>, <<"target">> => target()},
    Store = #{type => store, key => key(), value => provider()},
    FindValue = #{<<"key">> => key()},
    [?_assert(?M:is_find_node(FindNode)),
     ?_assertNot(?M:is_store(FindNode)),
     ?_assertNot(?M:is_find_value(FindNode)),
     ?_assert(?M:is_store(Store)),
     ?_assertNot(?M:is_find_node(Store)),
     ?_assertNot(?M:is_find_value(Store)),
     ?_assert(?M:is_find_value(FindValue)),
     ?_assertNot(?M:is_store(FindValue)),
     ?_assertNot(?M:is_find_node(#{type => find_node, target => 1})),
     ?_assertNot(?M:is_store(#{type => store, key => key()})),
     ?_assertNot(?M:is_find_value(#{type => find_value})),
     ?_assertNot(?M:is_find_node(undefined)),
     ?_assertNot(?M:is_store(<<"store">>)),
     ?_assertNot(?M:is_find_value({find_value, key()}))].

wrong_shapes_test_() ->
    Invalid = {error, invalid_message},
    [?_assertEqual(Invalid, ?M:decode_find_node(#{type => find_node})),
     ?_assertEqual(Invalid, ?M:decode_find_node(#{type => find_node, target => "list"})),
     ?_assertEqual(Invalid, ?M:decode_find_node(?M:encode_find_value(key()))),
     ?_assertEqual(Invalid, ?M:decode_store(#{type => store, key => key()})),
     ?_assertEqual(Invalid, ?M:decode_store(#{type => store, key => 1, value => #{}})),
     ?_assertEqual(Invalid, ?M:decode_store(#{type => store, key => key(), value => [1]})),
     ?_assertEqual(Invalid, ?M:decode_find_value(#{type => find_value, key => key})),
     ?_assertEqual(Invalid, ?M:decode_find_node_reply(#{type => find_node_reply})),
     ?_assertEqual(Invalid, ?M:decode_find_node_reply(#{type => find_node_reply,
                                                        nodes => peer(1)})),
     ?_assertEqual(Invalid, ?M:decode_find_node_reply(#{type => find_node_reply,
                                                        nodes => [peer(1) | peer(2)]})),
     ?_assertEqual(Invalid, ?M:decode_find_node_reply(#{type => find_node_reply,
                                                        nodes => [peer(1), #{}]})),
     ?_assertEqual(Invalid, ?M:decode_find_value_reply(#{type => find_value_reply,
                                                         value => []})),
     ?_assertEqual(Invalid, ?M:decode_find_value_reply(#{type => find_value_reply,
                                                         result => maybe, value => []})),
     ?_assertEqual(Invalid, ?M:decode_find_value_reply(#{type => find_value_reply,
                                                         result => value})),
     ?_assertEqual(Invalid, ?M:decode_find_value_reply(#{type => find_value_reply,
                                                         result => value,
                                                         value => [provider() | x]})),
     ?_assertEqual(Invalid, ?M:decode_find_value_reply(#{type => find_value_reply,
                                                         result => value,
                                                         value => [<<"p">>]})),
     ?_assertEqual(Invalid, ?M:decode_find_value_reply(#{type => find_value_reply,
                                                         result => nodes,
                                                         nodes => [#{node_id => 1}]})),
     ?_assertEqual({error, invalid_node_info}, ?M:decode_node_info(#{})),
     ?_assertEqual({error, invalid_node_info}, ?M:decode_node_info(#{node_id => [1]})),
     ?_assertEqual({error, invalid_node_info}, ?M:decode_node_info([{node_id, <<1>>}]))].

%%--------------------------------------------------------------------
%% Hostile input
%%--------------------------------------------------------------------

junk_never_crashes_test() ->
    rand:seed(exsss, {17, 42, 4711}),
    lists:foreach(fun check_any_term/1, [junk(4) || _ <- lists:seq(1, 3000)]),
    lists:foreach(fun check_any_term/1, fixed_junk()).

fixed_junk() ->
    [0, -1, 1.5, 1 bsl 300, atom, "", "find_node", <<>>, <<1:3>>, [], [a | b], {}, {a, b},
     #{}, self(), make_ref(), fun() -> ok end,
     #{type => find_node, target => <<1:7>>},
     #{type => find_value_reply, result => nodes, nodes => [#{node_id => <<1>>} | tail]},
     #{<<"type">> => <<"store">>, <<"key">> => <<>>, <<"value">> => #{}},
     #{type => [find_node]}, #{{type} => find_node}, #{1 => 2}].

%% Every reader answers any term with a value of its declared shape, and the
%% readers agree with each other.
check_any_term(Term) ->
    Classified = ?M:classify(Term),
    FindNode = ?M:decode_find_node(Term),
    Store = ?M:decode_store(Term),
    FindValue = ?M:decode_find_value(Term),
    ?assertEqual(ok_or_error(FindNode), ?M:is_find_node(Term)),
    ?assertEqual(ok_or_error(Store), ?M:is_store(Term)),
    ?assertEqual(ok_or_error(FindValue), ?M:is_find_value(Term)),
    ?assertEqual(Classified, expected_class(FindNode, Store, FindValue)),
    ?assertMatch({_, _}, ?M:decode_find_node_reply(Term)),
    ?assertMatch({_, _}, ?M:decode_find_value_reply(Term)),
    ?assertMatch({_, _}, ?M:decode_node_info(Term)).

ok_or_error({ok, _}) -> true;
ok_or_error({error, invalid_message}) -> false.

expected_class({ok, Target}, _, _) when is_binary(Target) -> {find_node, Target};
expected_class(_, {ok, {Key, Value}}, _) when is_binary(Key), is_map(Value) ->
    {store, Key, Value};
expected_class(_, _, {ok, Key}) when is_binary(Key) -> {find_value, Key};
expected_class(_, _, _) -> {error, unknown_message}.

junk(0) ->
    leaf();
junk(Depth) ->
    case rand:uniform(6) of
        1 -> leaf();
        2 -> [junk(Depth - 1) || _ <- lists:seq(1, rand:uniform(3))];
        3 -> [junk(Depth - 1) | junk(Depth - 1)];
        4 -> list_to_tuple([junk(Depth - 1) || _ <- lists:seq(1, rand:uniform(3))]);
        5 -> maps:from_list([{junk(Depth - 1), junk(Depth - 1)} || _ <- lists:seq(1, 3)]);
        6 -> message_like(Depth - 1)
    end.

%% A map of known field names, as atoms or binaries, with random values.
message_like(Depth) ->
    Names = [name(Field) || Field <- ?FIELDS, rand:uniform(2) =:= 1],
    maps:from_list([{Name, field_value(Depth)} || Name <- Names]).

field_value(0) ->
    leaf();
field_value(Depth) ->
    case rand:uniform(4) of
        1 -> name(pick(?TAGS));
        2 -> crypto:strong_rand_bytes(rand:uniform(40) - 1);
        3 -> [message_like(Depth - 1) || _ <- lists:seq(1, rand:uniform(2))];
        4 -> junk(Depth - 1)
    end.

leaf() ->
    pick([0, 42, -7, 3.14, 1 bsl 70, ok, undefined, nil, <<>>, <<1:5>>,
          crypto:strong_rand_bytes(32), "abc", [], #{}, {}, self(), make_ref(),
          name(pick(?TAGS)), name(pick(?FIELDS))]).

name(Atom) ->
    case rand:uniform(2) of
        1 -> Atom;
        2 -> atom_to_binary(Atom)
    end.

pick(List) ->
    lists:nth(rand:uniform(length(List)), List).

no_atoms_created_test() ->
    read_all(fresh_messages()),
    Before = erlang:system_info(atom_count),
    read_all(fresh_messages()),
    ?assertEqual(Before, erlang:system_info(atom_count)).

read_all(Messages) ->
    Readers = [fun ?M:classify/1, fun ?M:decode_find_node/1, fun ?M:decode_store/1,
               fun ?M:decode_find_value/1, fun ?M:decode_find_node_reply/1,
               fun ?M:decode_find_value_reply/1, fun ?M:decode_node_info/1,
               fun ?M:is_find_node/1, fun ?M:is_store/1, fun ?M:is_find_value/1],
    [Read(Msg) || Msg <- Messages, Read <- Readers].

%% Maps whose binary keys and tag values were never atoms.
fresh_messages() ->
    lists:append([[#{<<"type">> => fresh(), fresh() => fresh()},
                   #{fresh() => fresh(), fresh() => [#{fresh() => fresh()}]},
                   #{<<"type">> => <<"find_value_reply">>, <<"result">> => fresh(),
                     <<"value">> => []},
                   #{<<"type">> => <<"find_node_reply">>,
                     <<"nodes">> => [#{<<"node_id">> => fresh(), fresh() => fresh()}]},
                   #{<<"target">> => fresh(), fresh() => fresh()}]
                  || _ <- lists:seq(1, 100)]).

fresh() ->
    Unique = integer_to_binary(erlang:unique_integer([positive])),
    Random = binary:encode_hex(crypto:strong_rand_bytes(8)),
    <<"fresh_atom_", Unique/binary, "_", Random/binary>>.

-module(macula_routing_nodeid_tests).

-include_lib("eunit/include/eunit.hrl").

-define(M, macula_routing_nodeid).

%% An id whose bytes are 0, 1, ..., 31 and its hex forms.
id() -> list_to_binary(lists:seq(0, 31)).
hex_lower() -> "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".
hex_upper() -> string:uppercase(hex_lower()).

%% An id with exactly N leading zero bits (N in 0..255).
id_with_leading_zeros(N) ->
    <<0:N, 1:1, 0:(255 - N)>>.

generate_test() ->
    A = ?M:generate(),
    ?assertEqual(32, byte_size(A)),
    ?assertNotEqual(A, ?M:generate()).

from_binary_test_() ->
    [?_assertEqual({ok, id()}, ?M:from_binary(id())),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<1:248>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<1:264>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<1:255>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(binary_to_list(id()))),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(42))].

normalize_test_() ->
    NonHex = binary:copy(<<"zz">>, 32),
    [?_assertEqual(id(), ?M:normalize(id())),
     ?_assertEqual(id(), ?M:normalize(list_to_binary(hex_lower()))),
     ?_assertEqual(id(), ?M:normalize(list_to_binary(hex_upper()))),
     ?_assertEqual(crypto:hash(sha256, NonHex), ?M:normalize(NonHex)),
     ?_assertEqual(crypto:hash(sha256, <<"node-1">>), ?M:normalize(<<"node-1">>)),
     ?_assertEqual(crypto:hash(sha256, <<>>), ?M:normalize(<<>>)),
     ?_assertError(badarg, ?M:normalize("node-1")),
     ?_assertError(badarg, ?M:normalize(undefined))].

distance_test_() ->
    A = id(),
    B = ?M:generate(),
    [?_assertEqual(<<0:256>>, ?M:distance(A, A)),
     ?_assertEqual(?M:distance(A, B), ?M:distance(B, A)),
     ?_assertEqual(<<16#FF, 0:248>>, ?M:distance(<<0:256>>, <<16#FF, 0:248>>)),
     ?_assertEqual(crypto:exor(A, B), ?M:distance(A, B)),
     %% A hex id is the same node as its raw bytes.
     ?_assertEqual(<<0:256>>, ?M:distance(A, list_to_binary(hex_upper()))),
     %% Other lengths are hashed first, so the distance is still 32 bytes.
     ?_assertEqual(crypto:exor(crypto:hash(sha256, <<"a">>), A), ?M:distance(<<"a">>, A)),
     ?_assertError(badarg, ?M:distance(A, nil)),
     ?_assertError(badarg, ?M:distance(1, A))].

leading_zeros_test_() ->
    [?_assertEqual(256, ?M:leading_zeros(<<0:256>>)),
     ?_assertEqual(0, ?M:leading_zeros(<<16#80, 0:248>>)),
     ?_assertEqual(0, ?M:leading_zeros(<<16#FF:8, 0:248>>)),
     ?_assertEqual(7, ?M:leading_zeros(<<1, 0:248>>)),
     ?_assertEqual(15, ?M:leading_zeros(<<0, 1, 0:240>>)),
     ?_assertEqual(255, ?M:leading_zeros(<<1:256>>)),
     ?_assertEqual(0, ?M:leading_zeros(<<>>)),
     ?_assertEqual(8, ?M:leading_zeros(<<0>>)),
     ?_assertError(badarg, ?M:leading_zeros([0, 0])),
     ?_assertError(badarg, ?M:leading_zeros(0)),
     ?_test([?assertEqual(N, ?M:leading_zeros(id_with_leading_zeros(N)))
             || N <- lists:seq(0, 255)])].

compare_and_closer_to_test_() ->
    Target = <<0:256>>,
    Near = <<1:256>>,
    Far = <<16#80, 0:248>>,
    [?_assertEqual(less, ?M:compare(Target, Near, Far)),
     ?_assertEqual(greater, ?M:compare(Target, Far, Near)),
     ?_assertEqual(equal, ?M:compare(Target, Near, Near)),
     ?_assert(?M:closer_to(Target, Near, Far)),
     ?_assertNot(?M:closer_to(Target, Far, Near)),
     ?_assertNot(?M:closer_to(Target, Near, Near)),
     %% The target itself is closest to the target.
     ?_assert(?M:closer_to(Far, Far, Near)),
     ?_assertEqual(less, ?M:compare(Near, Near, Target)),
     %% Distance is big-endian: the first differing byte decides.
     ?_assert(?M:closer_to(Target, <<0, 16#FF:8, 16#FF:240>>, <<1, 0:248>>)),
     ?_assertError(badarg, ?M:compare(Target, Near, far)),
     ?_assertError(badarg, ?M:closer_to(target, Near, Far))].

compare_agrees_with_distance_order_test() ->
    Target = ?M:generate(),
    Ids = [?M:generate() || _ <- lists:seq(1, 50)],
    ByDistance = lists:sort([{?M:distance(Target, Id), Id} || Id <- Ids]),
    ByCompare = lists:sort(fun(A, B) -> ?M:compare(Target, A, B) =/= greater end, Ids),
    ?assertEqual([Id || {_, Id} <- ByDistance], ByCompare).

bucket_index_test_() ->
    Self = <<0:256>>,
    [?_assertEqual(256, ?M:bucket_index(Self, Self)),
     ?_assertEqual(0, ?M:bucket_index(Self, <<16#80, 0:248>>)),
     ?_assertEqual(255, ?M:bucket_index(Self, <<1:256>>)),
     ?_assertEqual(200, ?M:bucket_index(Self, id_with_leading_zeros(200))),
     ?_assertEqual(?M:bucket_index(Self, id()), ?M:bucket_index(id(), Self)),
     ?_assertEqual(256, ?M:bucket_index(<<"peer">>, <<"peer">>)),
     ?_assertError(badarg, ?M:bucket_index(Self, "peer"))].

to_hex_test_() ->
    [?_assertEqual(hex_lower(), ?M:to_hex(id())),
     ?_assertEqual(lists:duplicate(64, $f), ?M:to_hex(<<16#FF:8, -1:248>>)),
     ?_assert(io_lib:printable_latin1_list(?M:to_hex(?M:generate()))),
     ?_assertEqual(64, length(?M:to_hex(?M:generate()))),
     ?_assertEqual("0aff", ?M:to_hex(<<16#0A, 16#FF>>)),
     ?_assertEqual("", ?M:to_hex(<<>>)),
     ?_assertError(badarg, ?M:to_hex(hex_lower()))].

%% As the old module: the bare 32-byte id from 64 hex characters of either case.
from_hex_test_() ->
    Mixed = "000102030405060708090A0b0C0d0E0f101112131415161718191A1B1c1d1E1F",
    [?_assertEqual(id(), ?M:from_hex(hex_lower())),
     ?_assertEqual(id(), ?M:from_hex(hex_upper())),
     ?_assertEqual(id(), ?M:from_hex(Mixed)),
     ?_assertEqual(<<0:256>>, ?M:from_hex(lists:duplicate(64, $0))),
     ?_assertEqual(<<-1:256>>, ?M:from_hex(lists:duplicate(64, $F))),
     %% Beyond the old module, which took charlists only: a 64-byte binary reads the same.
     ?_assertEqual(id(), ?M:from_hex(list_to_binary(hex_lower()))),
     ?_assertEqual(id(), ?M:from_hex(list_to_binary(Mixed)))].

%% A string that is not 64 characters long raises `function_clause', as the old guard
%% `length(Hex) =:= 64' did; so does a binary of another length, and any other term.
from_hex_wrong_length_test_() ->
    Wrong = ["", "xyz", tl(hex_lower()), hex_lower() ++ "0", hex_lower() ++ hex_lower(),
             [$a | $b], <<>>, <<"xyz">>, list_to_binary(tl(hex_lower())),
             list_to_binary(hex_lower() ++ "0"), id(), abc, 123],
    [{title(Hex), ?_assertError(function_clause, ?M:from_hex(Hex))} || Hex <- Wrong].

%% 64 characters with one that is not a hex digit raise `badarg', wherever it is.
from_hex_not_hex_test_() ->
    NotHex = [[$g | tl(hex_lower())],
              lists:droplast(hex_lower()) ++ "g",
              replace_nth(20, $\s, hex_lower()),
              replace_nth(33, $G, hex_upper()),
              replace_nth(2, $-, hex_lower()),
              lists:duplicate(64, $z),
              %% not even a byte
              [16#100 | tl(hex_lower())],
              %% 64 elements, but 65 characters
              [<<"00">> | tl(hex_lower())]],
    Binaries = [list_to_binary(Hex) || Hex <- lists:sublist(NotHex, 6)],
    [{title(Hex), ?_assertError(badarg, ?M:from_hex(Hex))} || Hex <- NotHex ++ Binaries].

title(Term) ->
    lists:flatten(io_lib:format("~0tp", [Term])).

replace_nth(N, Char, List) ->
    {Before, [_ | After]} = lists:split(N - 1, List),
    Before ++ [Char | After].

hex_round_trip_test() ->
    [begin
         Id = ?M:generate(),
         Hex = ?M:to_hex(Id),
         ?assertEqual(Id, ?M:from_hex(Hex)),
         ?assertEqual(Id, ?M:from_hex(string:uppercase(Hex))),
         ?assertEqual(Id, ?M:normalize(list_to_binary(Hex)))
     end || _ <- lists:seq(1, 20)].

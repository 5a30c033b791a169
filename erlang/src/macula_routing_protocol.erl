%% @doc Builds and reads the DHT request and reply maps.
%%
%% These maps travel between nodes, so reading them is a trust boundary:
%% every decoder accepts any term without crashing, answers a wrong shape
%% with `{error, _}' (or `false' from the `is_*' predicates), and never turns
%% a binary into an atom. Field names and tag values are accepted as atoms
%% or as binaries (`<<"type">> => <<"find_node">>'), and requests from old
%% senders without a `type' are recognised by their fields: `target' is a
%% find_node, `key' with `value' a store, `key' alone a find_value.
%%
%% Shapes enforced on both sides: targets and keys are binaries, stored
%% values and providers are maps, node lists are proper lists of NodeInfo
%% maps with a binary `node_id'. Encoders raise on shapes the decoders
%% would reject, so a bad message fails at its sender.
-module(macula_routing_protocol).

-export([encode_find_node/1, encode_find_node_reply/1, encode_store/2,
         encode_find_value/1, encode_find_value_reply/1, encode_node_info/1]).
-export([decode_find_node/1, decode_find_node_reply/1, decode_store/1,
         decode_find_value/1, decode_find_value_reply/1, decode_node_info/1]).
-export([is_find_node/1, is_store/1, is_find_value/1, classify/1]).

-export_type([node_info/0, provider/0, value_result/0]).

-type node_info() :: #{node_id := binary(), atom() | binary() => term()}.
-type provider() :: map().
-type value_result() :: {value, [provider()]} | {nodes, [node_info()]}.
-type message_type() :: find_node | find_node_reply | store | find_value | find_value_reply.
%% A message read by `parse/1': its type and what it carries.
-type parsed() :: {find_node, binary()}
                | {find_node_reply, [node_info()]}
                | {store, {binary(), provider()}}
                | {find_value, binary()}
                | {find_value_reply, value_result()}.
-type invalid() :: {error, invalid_message}.

-define(TYPES, [find_node, find_node_reply, store, find_value, find_value_reply]).
-define(NODE_INFO_OPTIONAL, [address, endpoint]).

%%====================================================================
%% Encoding
%%====================================================================

-spec encode_find_node(binary()) -> #{type := find_node, target := binary()}.
encode_find_node(Target) when is_binary(Target) ->
    #{type => find_node, target => Target}.

-spec encode_find_node_reply([node_info()]) ->
          #{type := find_node_reply, nodes := [node_info()]}.
encode_find_node_reply(Nodes) when is_list(Nodes) ->
    #{type => find_node_reply, nodes => encode_nodes(Nodes)}.

-spec encode_store(binary(), provider()) ->
          #{type := store, key := binary(), value := provider()}.
encode_store(Key, Value) when is_binary(Key), is_map(Value) ->
    #{type => store, key => Key, value => Value}.

-spec encode_find_value(binary()) -> #{type := find_value, key := binary()}.
encode_find_value(Key) when is_binary(Key) ->
    #{type => find_value, key => Key}.

%% @doc A hit carries the providers, a miss the closest nodes known.
-spec encode_find_value_reply(value_result()) -> map().
encode_find_value_reply({value, Providers}) when is_list(Providers) ->
    #{type => find_value_reply, result => value,
      value => [encode_provider(P) || P <- Providers]};
encode_find_value_reply({nodes, Nodes}) when is_list(Nodes) ->
    #{type => find_value_reply, result => nodes, nodes => encode_nodes(Nodes)}.

%% @doc Keeps `node_id' and whichever of `address' and `endpoint' are
%% present, values as given; other fields (such as `last_seen') stay local.
%% Raises `badarg' for a map without a binary `node_id'.
-spec encode_node_info(node_info()) -> node_info().
encode_node_info(Node) ->
    case decode_node_info(Node) of
        {ok, Info} -> Info;
        {error, invalid_node_info} -> erlang:error(badarg, [Node])
    end.

-spec encode_nodes([node_info()]) -> [node_info()].
encode_nodes(Nodes) ->
    [encode_node_info(Node) || Node <- Nodes].

-spec encode_provider(provider()) -> provider().
encode_provider(Provider) when is_map(Provider) -> Provider.

%%====================================================================
%% Decoding
%%====================================================================

-spec decode_find_node(term()) -> {ok, binary()} | {error, invalid_message}.
decode_find_node(Msg) -> expect(find_node, Msg).

-spec decode_find_node_reply(term()) -> {ok, [node_info()]} | {error, invalid_message}.
decode_find_node_reply(Msg) -> expect(find_node_reply, Msg).

-spec decode_store(term()) -> {ok, {binary(), provider()}} | {error, invalid_message}.
decode_store(Msg) -> expect(store, Msg).

-spec decode_find_value(term()) -> {ok, binary()} | {error, invalid_message}.
decode_find_value(Msg) -> expect(find_value, Msg).

-spec decode_find_value_reply(term()) -> {ok, value_result()} | {error, invalid_message}.
decode_find_value_reply(Msg) -> expect(find_value_reply, Msg).

%% @doc Reads a NodeInfo with atom or binary field names into an atom-keyed
%% map of `node_id' plus whichever of `address' and `endpoint' are present.
-spec decode_node_info(term()) -> {ok, node_info()} | {error, invalid_node_info}.
decode_node_info(Node) when is_map(Node) ->
    case binary_field(node_id, Node) of
        {ok, NodeId} -> {ok, maps:merge(#{node_id => NodeId}, optional_fields(Node))};
        error -> {error, invalid_node_info}
    end;
decode_node_info(_) ->
    {error, invalid_node_info}.

-spec optional_fields(map()) -> #{address => term(), endpoint => term()}.
optional_fields(Node) ->
    maps:from_list([{Name, Value} || Name <- ?NODE_INFO_OPTIONAL,
                                     {ok, Value} <- [field(Name, Node)]]).

-spec is_find_node(term()) -> boolean().
is_find_node(Msg) -> is_type(find_node, Msg).

-spec is_store(term()) -> boolean().
is_store(Msg) -> is_type(store, Msg).

-spec is_find_value(term()) -> boolean().
is_find_value(Msg) -> is_type(find_value, Msg).

%% @doc Sorts an incoming request for the server's `handle_message'.
-spec classify(term()) ->
          {find_node, binary()} | {store, binary(), provider()} | {find_value, binary()}
        | {error, unknown_message}.
classify(Msg) ->
    case parse(Msg) of
        {find_node, Target} -> {find_node, Target};
        {store, {Key, Value}} -> {store, Key, Value};
        {find_value, Key} -> {find_value, Key};
        _ -> {error, unknown_message}
    end.

%%====================================================================
%% Internal
%%====================================================================

-spec expect(message_type(), term()) -> {ok, term()} | invalid().
expect(Type, Msg) ->
    case parse(Msg) of
        {Type, Body} -> {ok, Body};
        _ -> {error, invalid_message}
    end.

-spec is_type(message_type(), term()) -> boolean().
is_type(Type, Msg) ->
    element(1, parse(Msg)) =:= Type.

%% Every decoder goes through here: {Type, Body} or {error, invalid_message}.
-spec parse(term()) -> parsed() | invalid().
parse(Msg) when is_map(Msg) ->
    case message_type(Msg) of
        {ok, Type} -> parse_body(Type, Msg);
        error -> invalid()
    end;
parse(_) ->
    invalid().

-spec message_type(map()) -> {ok, message_type()} | error.
message_type(Msg) ->
    case field(type, Msg) of
        {ok, Tag} -> known_name(Tag, ?TYPES);
        error -> legacy_type(Msg)
    end.

-spec legacy_type(map()) -> {ok, find_node | store | find_value} | error.
legacy_type(Msg) ->
    case {has_field(target, Msg), has_field(key, Msg), has_field(value, Msg)} of
        {true, _, _} -> {ok, find_node};
        {false, true, true} -> {ok, store};
        {false, true, false} -> {ok, find_value};
        {false, false, _} -> error
    end.

-spec parse_body(message_type(), map()) -> parsed() | invalid().
parse_body(find_node, Msg) ->
    tagged(find_node, binary_field(target, Msg));
parse_body(find_value, Msg) ->
    tagged(find_value, binary_field(key, Msg));
parse_body(store, Msg) ->
    case {binary_field(key, Msg), field(value, Msg)} of
        {{ok, Key}, {ok, Value}} when is_map(Value) -> {store, {Key, Value}};
        _ -> invalid()
    end;
parse_body(find_node_reply, Msg) ->
    tagged(find_node_reply, node_list(Msg));
parse_body(find_value_reply, Msg) ->
    case field(result, Msg) of
        {ok, Result} -> parse_value_result(known_name(Result, [value, nodes]), Msg);
        error -> invalid()
    end.

-spec parse_value_result({ok, value | nodes} | error, map()) ->
          {find_value_reply, value_result()} | invalid().
parse_value_result({ok, value}, Msg) ->
    case field(value, Msg) of
        {ok, Providers} -> tagged_result(value, map_list(fun provider/1, Providers));
        error -> invalid()
    end;
parse_value_result({ok, nodes}, Msg) ->
    tagged_result(nodes, node_list(Msg));
parse_value_result(error, _Msg) ->
    invalid().

-spec tagged_result(value | nodes, {ok, [provider()] | [node_info()]} | error) ->
          {find_value_reply, value_result()} | invalid().
tagged_result(Result, {ok, List}) -> {find_value_reply, {Result, List}};
tagged_result(_Result, error) -> invalid().

-spec tagged(Type, {ok, Body} | error) -> {Type, Body} | invalid()
          when Type :: find_node | find_value | find_node_reply.
tagged(Type, {ok, Body}) -> {Type, Body};
tagged(_Type, error) -> invalid().

-spec invalid() -> invalid().
invalid() -> {error, invalid_message}.

-spec node_list(map()) -> {ok, [node_info()]} | error.
node_list(Msg) ->
    case field(nodes, Msg) of
        {ok, Nodes} -> map_list(fun decode_node_info/1, Nodes);
        error -> error
    end.

-spec provider(term()) -> {ok, provider()} | {error, invalid_provider}.
provider(Provider) when is_map(Provider) -> {ok, Provider};
provider(_) -> {error, invalid_provider}.

%% Like lists:map/2 over a decoder, but any failure, a non-list or an
%% improper tail gives `error' instead of a crash.
-spec map_list(fun((term()) -> {ok, T} | {error, term()}), term()) -> {ok, [T]} | error.
map_list(Decode, List) ->
    map_list(Decode, List, []).

-spec map_list(fun((term()) -> {ok, T} | {error, term()}), term(), [T]) -> {ok, [T]} | error.
map_list(_Decode, [], Acc) ->
    {ok, lists:reverse(Acc)};
map_list(Decode, [Elem | Rest], Acc) ->
    case Decode(Elem) of
        {ok, Decoded} -> map_list(Decode, Rest, [Decoded | Acc]);
        {error, _} -> error
    end;
map_list(_Decode, _NotAList, _Acc) ->
    error.

%% A field under its atom name, else under the binary of that name.
-spec field(atom(), map()) -> {ok, term()} | error.
field(Name, Map) ->
    case maps:find(Name, Map) of
        {ok, Value} -> {ok, Value};
        error -> maps:find(atom_to_binary(Name), Map)
    end.

-spec binary_field(atom(), map()) -> {ok, binary()} | error.
binary_field(Name, Map) ->
    case field(Name, Map) of
        {ok, Value} when is_binary(Value) -> {ok, Value};
        _ -> error
    end.

-spec has_field(atom(), map()) -> boolean().
has_field(Name, Map) ->
    field(Name, Map) =/= error.

%% The known atom that Term names, as the atom itself or its binary.
-spec known_name(term(), [Name]) -> {ok, Name} | error when Name :: atom().
known_name(Term, [Name | Names]) ->
    case Term =:= Name orelse Term =:= atom_to_binary(Name) of
        true -> {ok, Name};
        false -> known_name(Term, Names)
    end;
known_name(_Term, []) ->
    error.
